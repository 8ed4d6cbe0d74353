"""The engine's layout: each csrc/ file is one concept and calls only the
files below it (docs/architecture.md, "Layers"). These tests read the C
sources: a call that goes up or round a cycle fails here, naming the files."""

import pathlib
import re

CSRC = pathlib.Path(__file__).resolve().parent.parent / "csrc"
ARCHITECTURE = CSRC.parent / "docs" / "architecture.md"

DEFINITION = re.compile(r"^(?!static\b)[A-Za-z_][\w \*]*?\b(tm_\w+)\([^;]*?\)\s*\{", re.M | re.S)


def _code(path):
    """The file's text without comments and string literals."""
    text = path.read_text()
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def _call_graph():
    files = sorted(CSRC.glob("*.c"))
    code = {f.name: _code(f) for f in files}
    owner = {}
    for name, text in code.items():
        for fn in DEFINITION.findall(text):
            owner[fn] = name
    graph = {name: {} for name in code}
    for name, text in code.items():
        for fn, where in owner.items():
            if where != name and re.search(r"\b" + fn + r"\b", text):
                graph[name].setdefault(where, []).append(fn)
    return graph


def _cycle(graph):
    """One cycle of files as a list, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_call_graph_is_read_from_the_sources():
    graph = _call_graph()
    assert "tm_dispatch_fault" in graph["handler.c"].get("dispatch.c", [])
    assert "tm_uffd_install" in graph["promote.c"].get("uffd.c", [])


def test_no_c_file_calls_into_a_file_that_calls_it():
    graph = _call_graph()
    cycle = _cycle(graph)
    if cycle:
        steps = [f"{a} -> {b} ({', '.join(sorted(graph[a][b]))})" for a, b in zip(cycle, cycle[1:])]
        raise AssertionError("C files call each other round a cycle:\n  " + "\n  ".join(steps))


def test_the_os_layer_and_the_error_record_call_no_other_engine_file():
    graph = _call_graph()
    assert graph["os.c"] == {}
    assert graph["error.c"] == {}


def test_every_c_file_is_in_the_architecture_table_and_the_layer_drawing():
    doc = ARCHITECTURE.read_text()
    table = set(re.findall(r"^\| `csrc/([\w.]+\.c)` \|", doc, re.M))
    drawing = doc.split("## Layers", 1)[1].split("```")[1]
    missing_table = [f.name for f in CSRC.glob("*.c") if f.name not in table]
    missing_drawing = [f.name for f in CSRC.glob("*.c") if not re.search(r"\b" + re.escape(f.name[:-2]) + r"\.c", drawing)]
    assert missing_table == [], f"csrc files not in docs/architecture.md's table: {missing_table}"
    assert missing_drawing == [], f"csrc files not in docs/architecture.md's layer drawing: {missing_drawing}"

"""python -m tieredmem COMMAND: one module per subcommand in tieredmem/commands."""
import argparse
import sys

from .commands import bench, demo, doctor, run, stats, top

COMMANDS = {"demo": demo, "run": run, "top": top, "stats": stats, "bench": bench, "doctor": doctor}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="tieredmem", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    parsers = {}
    for name, module in COMMANDS.items():
        parsers[name] = sub.add_parser(name, help=module.__doc__.splitlines()[0], description=module.__doc__,
                                       formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
        module.add_arguments(parsers[name])
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["run"]:  # the program's arguments are not ours to parse
        own, program = run.split_argv(argv[1:])
        args = parsers["run"].parse_args(own)
        args.command = "run"
        if program[:1] == ["-m"]:
            if len(program) < 2:
                parsers["run"].error("argument -m: expected a module name")
            args.module, args.program = program[1], program[2:]
        else:
            args.program = program
    else:
        args = parser.parse_args(argv)
    return COMMANDS[args.command].run(args, parsers[args.command])


if __name__ == "__main__":
    sys.exit(main())

"""The README as a newcomer reads it: its first screen of text says how to
check the machine (`doctor`) and how to see where a job's pages are (`top`)."""
import pathlib

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
SCREEN_LINES = 24  # a terminal's, and about a browser's first screen of a README


def test_the_first_screen_shows_doctor_and_top():
    first_screen = "\n".join(README.read_text().splitlines()[:SCREEN_LINES])
    assert "tieredmem doctor" in first_screen
    assert "tieredmem top" in first_screen

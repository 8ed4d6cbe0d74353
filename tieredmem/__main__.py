"""python -m tieredmem COMMAND: one module per subcommand in tieredmem/commands."""
import argparse
import sys

from .commands import demo

COMMANDS = {"demo": demo}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="tieredmem", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=module.__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    return COMMANDS[args.command].run(args)


if __name__ == "__main__":
    sys.exit(main())

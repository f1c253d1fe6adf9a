"""The ``edgeflow`` command: run, check, components, and the commands components register.

- ``edgeflow run [SITE] [bytewax options]``: the edge flow of SITE (default: the demo site),
  exactly as ``python -m bytewax.run flows.edge`` with ``EDGEFLOW_SITE=SITE``;
- ``edgeflow check SITE...``: validate, then print the resolved chain (inputs, operators,
  which sink takes which stream); exit 2 listing every problem;
- ``edgeflow components``: every registered type with its options and a sample;
- ``edgeflow backtest ...``, ``edgeflow sim opcua|modbus|mqtt ...``, ``edgeflow certs ...``
  and any command a component package registers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from flows.build import build_flow
from flows.config import load_site
from flows.errors import ConfigError
from flows.registry import Component, command, commands, component, components, register_command

__all__ = ["main"]

_USAGE = """usage: edgeflow COMMAND [ARGS]

commands:
  run [SITE] [OPTIONS]   run a site's edge flow (options go to python -m bytewax.run)
  check SITE...          validate site files and print their resolved chains
  components [TYPE]      list the registered inputs, operators and sinks with their options
{extra}"""


def _run(argv: list[str]) -> int:
    env = dict(os.environ)
    args = list(argv)
    if args and not args[0].startswith("-"):
        env["EDGEFLOW_SITE"] = args.pop(0)
    flow = "flows.process" if "--process" in args else "flows.edge"
    args = [a for a in args if a != "--process"]
    cmd = [sys.executable, "-m", "bytewax.run", flow, *args]
    return subprocess.call(cmd, env=env)


def _chain(site: Any) -> list[str]:
    lines = [f"site {site.name}: {site.site.enterprise}/{site.site.site} ({site.site.timezone})"]
    lines.append("  inputs:")
    for inp in site.inputs:
        emits = component("input", inp.type).emits(inp)
        lines.append(f"    {inp.id} ({inp.type}) -> {', '.join(emits)}")
    lines.append("  operators:")
    for op_cfg in site.operators:
        comp = component("operator", op_cfg.type)
        lines.append(
            f"    {op_cfg.id} ({op_cfg.type}): {', '.join(comp.needs(op_cfg))} -> "
            f"{', '.join(comp.emits(op_cfg))}"
        )
    lines.append("  sinks:")
    for sink in site.sinks:
        comp = component("sink", sink.type)
        lines.append(f"    {sink.id} ({sink.type}) <- {', '.join(comp.needs(sink))}")
    return lines


def _check(argv: list[str]) -> int:
    if not argv:
        print("usage: edgeflow check SITE.yaml...", file=sys.stderr)
        return 2
    failed = 0
    for path in argv:
        try:
            site = load_site(path)
            build_flow(site, name="check")
        except ConfigError as e:
            print(f"edgeflow: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"{path}: ok")
        print("\n".join(_chain(site)))
    return 2 if failed else 0


def _options(comp: Component) -> list[str]:
    schema = comp.config.model_json_schema(by_alias=True)
    required = set(schema.get("required", []))
    out = []
    for name, prop in schema.get("properties", {}).items():
        if name == "type":
            continue
        kind = prop.get("type") or " | ".join(
            str(a.get("type", a.get("$ref", "?")).rsplit("/", 1)[-1]) for a in prop.get("anyOf", [])
        )
        default = "" if name in required else f" = {json.dumps(prop.get('default'))}"
        desc = prop.get("description", "")
        out.append(f"      {name}: {kind}{default}{'  # ' + desc if desc else ''}")
    return out


def _components(argv: list[str]) -> int:
    wanted = set(argv)
    for comp in components():
        if wanted and comp.type not in wanted:
            continue
        print(f"{comp.kind} {comp.type}: {comp.summary}  [{comp.module}]")
        print("    options:")
        print("\n".join(_options(comp)))
        if comp.sample is not None and comp.sample.is_file():
            print("    sample:")
            for line in comp.sample.read_text().splitlines():
                print(f"      {line}")
        print()
    return 0


def _backtest(argv: list[str]) -> int:
    from flows.backtest import main as backtest_main

    return backtest_main(argv)


register_command("run", _run, "run a site's edge flow")
register_command("check", _check, "validate site files and print their chains")
register_command("components", _components, "list registered components")
register_command("backtest", _backtest, "replay history through a site's chain")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``edgeflow`` console script."""
    args = sys.argv[1:] if argv is None else argv
    try:
        if not args or args[0] in ("-h", "--help", "help"):
            extra = "\n".join(
                f"  {c.name:<22} {c.help}"
                for c in commands()
                if c.name not in ("run", "check", "components")
            )
            print(_USAGE.format(extra=extra))
            return 0 if args else 2
        cmd = command(args[0])
        if cmd is None:
            print(f"edgeflow: unknown command {args[0]!r} (edgeflow --help)", file=sys.stderr)
            return 2
        return cmd.main(args[1:])
    except ConfigError as e:
        print(f"edgeflow: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

"""Headless load test: run locust for a fixed time against a URL, write CSV and HTML reports, check the SLOs.

    python -m loadtest --host http://127.0.0.1:8000 -u 16 -r 4 -t 2m --out runs/loadtest/now
    python -m loadtest --check-only runs/loadtest/now          # re-check a finished run against --slo

Locust runs as a subprocess (`python -m locust ... --headless`): it monkey-patches the standard library with
gevent on import, which must not leak into this process, and a subprocess can be bounded by a hard timeout.
Exit status: 0 every SLO met, 1 an SLO missed, 2 the run itself failed (locust crashed, no stats written).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from loadtest.slo import SLOConfig, check, read_stats

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
LOCUSTFILE = PACKAGE_DIR / "locustfile.py"
DEFAULT_SLO = PACKAGE_DIR / "slo.yaml"
CSV_PREFIX = "stats"  # locust writes stats_stats.csv, stats_failures.csv, stats_exceptions.csv
HTML_REPORT = "report.html"

EXIT_OK, EXIT_SLO_MISS, EXIT_RUN_FAILED = 0, 1, 2


def parse_duration(text: str) -> float:
    """Seconds in a locust time span: `90`, `90s`, `2m`, `1h30m`."""
    text = text.strip()
    if text.isdigit():
        return float(text)
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not text or not m:
        raise ValueError(f"bad duration {text!r}; use e.g. 30s, 2m, 1h30m")
    h, mi, s = (int(g or 0) for g in m.groups())
    return float(h * 3600 + mi * 60 + s)


def locust_command(args: argparse.Namespace, out: Path) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        args.host,
        "-u",
        str(args.users),
        "-r",
        str(args.spawn_rate or args.users),
        "-t",
        args.run_time,
        "--stop-timeout",
        str(args.stop_timeout),
        "--csv",
        str(out / CSV_PREFIX),
        "--html",
        str(out / HTML_REPORT),
        "--only-summary",
        # Failures are judged by the SLO check; locust's own exit code should only mean "it crashed".
        "--exit-code-on-error",
        "0",
        "--afrl-max-docs",
        str(args.max_docs),
        "--afrl-explain-tokens",
        str(args.explain_tokens),
        "--afrl-explain-users",
        str(args.explain_users),
    ]
    return cmd + list(args.user_classes)


def run_locust(args: argparse.Namespace, out: Path) -> int:
    """Run locust, logging to out/locust.log; its exit status, or -1 when it had to be killed."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = locust_command(args, out)
    # The locustfile imports `loadtest.*`; make that work from a checkout that was not pip-installed.
    paths = [str(PACKAGE_DIR.parent), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))
    budget = parse_duration(args.run_time) + parse_duration(str(args.stop_timeout)) + args.grace
    log.info("running %s, %d users, against %s (hard limit %.0f s)", args.run_time, args.users, args.host, budget)
    started = time.monotonic()
    with (out / "locust.log").open("w") as logfile:
        proc = subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT, env=env)
        try:
            rc = proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            log.error("locust ran past %.0f s; stopping it", budget)
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            rc = -1
    log.info("locust ended after %.1f s, exit status %d; log: %s", time.monotonic() - started, rc, out / "locust.log")
    return rc


def evaluate(out: Path, slo_path: Path) -> int:
    """Check the stats in `out` against the SLO file, print a table and write out/slo.json."""
    config = SLOConfig.load(slo_path)
    try:
        rows = read_stats(out / f"{CSV_PREFIX}_stats.csv")
    except FileNotFoundError as e:
        print(f"loadtest: {e}", file=sys.stderr)
        return EXIT_RUN_FAILED
    checks = check(rows, config)
    passed = all(c.ok for c in checks)
    report = {"passed": passed, "slo": str(slo_path), "checks": [asdict(c) for c in checks]}
    (out / "slo.json").write_text(json.dumps(report, indent=2, default=str))
    for c in checks:
        print(c)
    print(f"SLO {'met' if passed else 'MISSED'}; reports in {out} ({HTML_REPORT}, {CSV_PREFIX}_stats.csv, slo.json)")
    return EXIT_OK if passed else EXIT_SLO_MISS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default=os.environ.get("AFRL_LOADTEST_HOST", "http://127.0.0.1:8000"), help="service URL")
    p.add_argument("-u", "--users", type=int, default=8, help="concurrent users")
    p.add_argument("-r", "--spawn-rate", type=float, default=None, help="users started per second (default: all)")
    p.add_argument("-t", "--run-time", default="60s", help="duration, e.g. 30s, 5m")
    p.add_argument("--stop-timeout", default="10s", help="time given to in-flight requests (streams) at the end")
    p.add_argument("--grace", type=float, default=60.0, help="seconds past run + stop time before a kill")
    p.add_argument("--out", type=Path, default=None, help="report folder (default runs/loadtest/<UTC time>)")
    p.add_argument("--slo", type=Path, default=DEFAULT_SLO, help="SLO YAML (default loadtest/slo.yaml)")
    p.add_argument("--max-docs", type=int, default=64, help="most documents per /score and /rerank request")
    p.add_argument("--explain-tokens", type=int, default=0, help="max_new_tokens per /explain (0: service default)")
    p.add_argument("--explain-users", type=int, default=0, help="fixed number of /explain users (0: by weight)")
    p.add_argument(
        "--user-classes",
        nargs="*",
        default=[],
        metavar="CLASS",
        help="only these users (ScoreUser, RerankUser, ExplainUser); default all, weighted 6:3:1",
    )
    p.add_argument("--check-only", type=Path, default=None, metavar="DIR", help="only check a finished run")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        SLOConfig.load(args.slo)  # refuse a bad SLO file before spending minutes on a run
        parse_duration(args.run_time)
        parse_duration(str(args.stop_timeout))
    except (ValueError, FileNotFoundError) as e:
        print(f"loadtest: error: {e}", file=sys.stderr)
        return EXIT_RUN_FAILED
    if args.check_only is not None:
        return evaluate(args.check_only, args.slo)
    if args.users < 1 or args.max_docs < 1:
        print("loadtest: error: --users and --max-docs must be at least 1", file=sys.stderr)
        return EXIT_RUN_FAILED
    out = args.out or Path("runs/loadtest") / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    rc = run_locust(args, out)
    if rc != 0:
        print(f"loadtest: locust failed (exit {rc}); see {out / 'locust.log'}", file=sys.stderr)
        status = evaluate(out, args.slo) if (out / f"{CSV_PREFIX}_stats.csv").is_file() else EXIT_RUN_FAILED
        return max(status, EXIT_RUN_FAILED)
    return evaluate(out, args.slo)

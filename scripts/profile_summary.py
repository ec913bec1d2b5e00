"""Top frames of py-spy raw profiles (collapsed stacks, as `bench_callbacks.py --profile` writes them).

    python scripts/profile_summary.py DIR/sqlite-serve-all.txt [--top 25] [--group] [--thread MainThread]

Per file: the samples, their split by thread, the frames with the most samples *inclusive* (the
frame anywhere on the stack: where time goes below it) and *self* (the frame on top: where the CPU
actually is), each as a % of all samples. --group folds frames into the areas named in AREAS
(uvicorn/httptools, starlette/fastapi, crypto, xml, sqlalchemy, driver, logging, metrics, ...).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# (area, pattern on "function (file:line)"): the first that matches names the frame's area
AREAS = [
    ("sqlite3 / psycopg (driver)", r"sqlite3|psycopg"),
    ("sqlalchemy", r"sqlalchemy"),
    ("crypto (wechatpy, cryptography)", r"wechatpy/crypto|wechatpy/work/crypto|cryptography|hashlib"),
    ("xml (xmltodict, expat, wechatpy parser)", r"xmltodict|expat|wechatpy/(work/)?(parser|messages|events|fields)"),
    ("logging", r"/logging/|bot/logs\.py"),
    ("prometheus_client", r"prometheus_client"),
    ("uvicorn / httptools / h11", r"uvicorn|httptools|h11"),
    ("fastapi / starlette / pydantic", r"fastapi|starlette|pydantic|anyio"),
    ("asyncio / uvloop", r"asyncio|uvloop"),
    ("threading / queue", r"threading\.py|queue\.py"),
    ("jinja2", r"jinja2"),
    ("bot", r"/bot/"),
]


def read(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        frames, _, n = line.rpartition(" ")
        if frames and n.isdigit():
            stacks.append((frames.split(";"), int(n)))
    return stacks


def area(frame: str) -> str | None:
    for name, pattern in AREAS:
        if re.search(pattern, frame):
            return name
    return None


def short(frame: str) -> str:
    # "fn (/long/path/site-packages/pkg/mod.py:12)" -> "fn (pkg/mod.py:12)"
    return re.sub(r"\((?:.*site-packages/|.*/work/main/|.*/lib/python3\.\d+/)?", "(", frame)


def summarise(path: Path, top: int, group: bool, thread: str | None = None) -> None:
    stacks = read(path)
    if thread:
        stacks = [(f, n) for f, n in stacks if f and thread in f[0]]
    total = sum(n for _, n in stacks)
    print(f"== {path.name}{f' (threads matching {thread!r})' if thread else ''}: {total} samples")
    if not total:
        return
    threads = Counter()
    inclusive, self_ = Counter(), Counter()
    for frames, n in stacks:
        if frames and frames[0].startswith(("thread ", "process ")):
            threads[frames[0]] += n
            while frames and frames[0].startswith(("thread ", "process ")):
                frames = frames[1:]
        if not frames:
            continue
        keys = [area(f) or "other" for f in frames] if group else [short(f) for f in frames]
        for k in set(keys):
            inclusive[k] += n
        # self: the innermost frame; grouped, the innermost frame that has an area
        leaf = next((k for k in reversed(keys) if k != "other"), "other") if group else keys[-1]
        self_[leaf] += n
    if threads:
        print("  threads: " + ", ".join(f"{t} {100 * n / total:.0f}%" for t, n in threads.most_common(8)))
    for title, counter in (("inclusive", inclusive), ("self", self_)):
        print(f"  -- top {title}")
        for k, n in counter.most_common(top):
            print(f"  {100 * n / total:5.1f}%  {k}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--group", action="store_true", help="fold frames into areas (uvicorn, sqlalchemy, ...)")
    ap.add_argument("--thread", help="only the threads whose name contains this (MainThread: the event loop)")
    a = ap.parse_args()
    for f in a.files:
        summarise(f, a.top, a.group, a.thread)


if __name__ == "__main__":
    main()

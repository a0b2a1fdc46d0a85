"""``fbsd-hil images list|fetch|path|prepare|iso``: the image layer from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from images.cache import ImageCache
from images.catalogue import load_catalogue
from images.download import cached_base, fetch
from images.errors import ImageError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "images", help="official FreeBSD images: list, fetch (verified, cached), path, prepare, GRUB ISOs"
    )
    _add_cache_and_mirror(parser, default=None)
    # `images fetch --mirror URL 14.3` (as the docs write it) works as well as `images --mirror URL fetch`:
    # each action takes the options too, and only overrides the value when given.
    common = argparse.ArgumentParser(add_help=False)
    _add_cache_and_mirror(common, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="images_command", metavar="ACTION")

    p = sub.add_parser("list", parents=[common], help="the catalogue, and which images are cached")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_list)

    p = sub.add_parser(
        "fetch", parents=[common], help="download + verify + cache a release; prints the base image path"
    )
    p.add_argument("release", nargs="?", help="X.Y or X.Y-FLAVOUR (default: the catalogue's default)")
    p.add_argument("--offline", action="store_true", help="use only the cache, never the network")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_fetch)

    p = sub.add_parser(
        "path", parents=[common], help="print the cached base image path (no network); exit 1 if missing"
    )
    p.add_argument("release", nargs="?", help="X.Y or X.Y-FLAVOUR (default: the catalogue's default)")
    p.set_defaults(func=_path)

    p = sub.add_parser(
        "prepare", parents=[common], help="boot the base once and prepare it for the harness (needs libvirt)"
    )
    p.add_argument("release", nargs="?", help="X.Y or X.Y-FLAVOUR (default: the catalogue's default)")
    p.add_argument("--offline", action="store_true", help="do not download the base")
    p.add_argument(
        "--disk-bus",
        choices=("virtio", "sata"),
        default="virtio",
        help="bus of the boot and dump disks (dump device vtbd1 or ada1)",
    )
    p.set_defaults(func=_prepare)

    p = sub.add_parser(
        "iso", parents=[common], help="make a GRUB ISO that boots a FreeBSD kernel file with kfreebsd"
    )
    p.add_argument("--kernel", required=True, type=Path, help="the kernel ELF file")
    p.add_argument(
        "--kenv", action="append", default=[], metavar="K=V", help="kernel environment (repeatable)"
    )
    p.add_argument(
        "--module",
        action="append",
        default=[],
        type=Path,
        metavar="PATH",
        help="kernel module (.ko) to load with kfreebsd_module_elf (repeatable)",
    )
    p.add_argument("--root", help="root to mount, e.g. ufs:/dev/gpt/rootfs (default: none, the kernel waits)")
    p.add_argument("--boot-flags", default="-h", help="kernel boot flags (default: -h, serial console)")
    p.add_argument(
        "--no-patch",
        action="store_true",
        help="use the system GRUB modules unpatched (Debian 12's triple-fault at handover)",
    )
    p.add_argument("-o", "--output", required=True, type=Path, help="ISO file to create (never overwritten)")
    p.set_defaults(func=_iso)

    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


def _add_cache_and_mirror(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument(
        "--cache",
        metavar="DIR",
        default=default,
        help="cache directory (default: $FBSD_HIL_CACHE, else $XDG_CACHE_HOME/fbsd-hil)",
    )
    parser.add_argument(
        "--mirror",
        metavar="URL",
        default=default,
        help="base URL replacing https://download.freebsd.org (default: $FBSD_HIL_MIRROR)",
    )


def _catalogue(args: argparse.Namespace):
    return load_catalogue(mirror=args.mirror)


def _release(args, catalogue) -> str:
    return args.release or catalogue.default().key


def _guard(func):
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except ImageError as exc:
            print(f"fbsd-hil images: {exc}", file=sys.stderr)
            return 1

    run.__doc__ = func.__doc__
    return run


@_guard
def _list(args: argparse.Namespace) -> int:
    catalogue = _catalogue(args)
    cache = ImageCache(args.cache)
    rows = []
    for image in catalogue:
        cached = cached_base(image, cache)
        rows.append(
            {
                "release": image.key,
                "default": image.default,
                "pinned_sha256": image.sha256,
                "cached": str(cached) if cached else None,
                "url": image.url,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"FreeBSD images ({catalogue.source})")
    for column in ("release", "default", "cached", "url"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["release"], "*" if row["default"] else "", row["cached"] or "-", row["url"])
    Console().print(table)
    return 0


@_guard
def _fetch(args: argparse.Namespace) -> int:
    catalogue = _catalogue(args)
    path = fetch(
        _release(args, catalogue),
        cache=args.cache,
        offline=args.offline,
        progress=not args.no_progress and sys.stderr.isatty(),
        catalogue=catalogue,
    )
    print(path)
    return 0


@_guard
def _path(args: argparse.Namespace) -> int:
    catalogue = _catalogue(args)
    print(fetch(_release(args, catalogue), cache=args.cache, offline=True, catalogue=catalogue))
    return 0


@_guard
def _prepare(args: argparse.Namespace) -> int:
    from images.preparation import prepare

    catalogue = _catalogue(args)
    prepared = prepare(
        _release(args, catalogue),
        cache=args.cache,
        offline=args.offline,
        catalogue=catalogue,
        disk_bus=args.disk_bus,
    )
    print(prepared.image)
    return 0


@_guard
def _iso(args: argparse.Namespace) -> int:
    from images.grub_iso import build_kernel_iso

    out = build_kernel_iso(
        args.kernel,
        args.kenv,
        args.output,
        boot_flags=args.boot_flags,
        root=args.root,
        patch=not args.no_patch,
        cache=args.cache,
        modules=args.module,
    )
    print(out)
    return 0

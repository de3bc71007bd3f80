#!/usr/bin/env python3
"""Write a single-layer container image as a docker-archive tarball, without Docker or a registry.

The archive is what `docker save` produces and `ctr images import` loads:

    manifest.json             [{"Config": "<sha>.json", "RepoTags": [TAG], "Layers": ["<sha>/layer.tar"]}]
    <sha>.json                the image config: entrypoint, cmd, user, env, workdir and
                              rootfs.diff_ids = [sha256 of the uncompressed layer tar]
    <sha>/layer.tar           the root filesystem

Output is deterministic: entries sorted, owned by root (unless a --dir says otherwise), mtime 0,
no creation date, so the same inputs give the same image id.

Used by e2e/scripts/images.sh; see `mkimage.py --help`.
"""

import argparse
import hashlib
import io
import json
import os
import sys
import tarfile


def parse_mode(text: str, default: int) -> int:
    return int(text, 8) if text else default


def build_layer(args: argparse.Namespace) -> bytes:
    entries = {}  # path inside the image -> TarInfo (+ data)

    def add_dirs_for(path: str) -> None:
        parent = os.path.dirname(path)
        while parent and parent not in entries:
            info = tarfile.TarInfo(parent)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            entries[parent] = (info, None)
            parent = os.path.dirname(parent)

    for spec in args.dir:
        # DEST[:MODE[:UID:GID]]
        dest, *rest = spec.split(":")
        path = dest.strip("/")
        info = tarfile.TarInfo(path)
        info.type = tarfile.DIRTYPE
        info.mode = parse_mode(rest[0] if rest else "", 0o755)
        if len(rest) >= 3:
            info.uid, info.gid = int(rest[1]), int(rest[2])
        add_dirs_for(path)
        entries[path] = (info, None)

    for spec in args.file:
        # SRC:DEST[:MODE]; a DEST ending in / keeps the source's file name.
        src, dest, *rest = spec.split(":")
        if dest.endswith("/"):
            dest += os.path.basename(src)
        path = dest.strip("/")
        with open(src, "rb") as f:
            data = f.read()
        mode = os.stat(src).st_mode & 0o777
        info = tarfile.TarInfo(path)
        info.size = len(data)
        info.mode = parse_mode(rest[0] if rest else "", 0o755 if mode & 0o111 else 0o644)
        add_dirs_for(path)
        entries[path] = (info, data)

    for spec in args.symlink:
        # DEST:TARGET
        dest, target = spec.split(":", 1)
        path = dest.strip("/")
        info = tarfile.TarInfo(path)
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
        add_dirs_for(path)
        entries[path] = (info, None)

    buf = io.BytesIO()
    # USTAR/GNU with numeric owners only: no user or group names that could differ between hosts.
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path in sorted(entries):
            info, data = entries[path]
            info.mtime, info.uname, info.gname = 0, "", ""
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tag", required=True, help="repository:tag, e.g. localhost/cellstack/pause:1.0")
    p.add_argument("--out", required=True, help="archive to write")
    p.add_argument("--entrypoint", default="[]", help="JSON list")
    p.add_argument("--cmd", default="[]", help="JSON list")
    p.add_argument("--user", default="65532:65532")
    p.add_argument("--workdir", default="/")
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE (repeatable)")
    p.add_argument("--port", action="append", default=[], help="exposed port, e.g. 8080/tcp")
    p.add_argument("--label", action="append", default=[], help="KEY=VALUE (repeatable)")
    p.add_argument("--file", action="append", default=[], help="SRC:DEST[:MODE] (repeatable)")
    p.add_argument("--dir", action="append", default=[], help="DEST[:MODE[:UID:GID]] (repeatable)")
    p.add_argument("--symlink", action="append", default=[], help="DEST:TARGET (repeatable)")
    args = p.parse_args()

    name, sep, tag = args.tag.rpartition(":")
    if not sep or "/" in tag or not tag or tag == "latest":
        p.error(f"--tag {args.tag!r}: needs an explicit tag other than 'latest'")

    layer = build_layer(args)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": args.user,
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"] + args.env,
            "Entrypoint": json.loads(args.entrypoint) or None,
            "Cmd": json.loads(args.cmd) or None,
            "WorkingDir": args.workdir,
            "ExposedPorts": {port: {} for port in args.port} or None,
            "Labels": dict(kv.split("=", 1) for kv in args.label) or None,
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "e2e/images/mkimage.py"}],
    }
    config["config"] = {k: v for k, v in config["config"].items() if v is not None}
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_name = diff_id.split(":")[1] + "/layer.tar"
    manifest = json.dumps(
        [{"Config": config_name, "RepoTags": [args.tag], "Layers": [layer_name]}], separators=(",", ":")
    ).encode()

    tmp = args.out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path, data in ((config_name, config_bytes), (layer_name, layer), ("manifest.json", manifest)):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, args.out)
    print(f"{args.tag} {config_name[:-5]} {len(layer)} bytes -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Writes the BoxedClaw guest image as a local OCI image layout, reproducibly.

One layer: a static busybox with applet symlinks, /etc/passwd and /etc/group with an `agent`
user (uid 1000), /workspace, /tmp (1777) and the static agent at /opt/boxedclaw/boxedclaw-agent.
The same inputs give byte-identical blobs: tar entries sorted, one fixed mtime
(SOURCE_DATE_EPOCH), numeric owners without names, JSON with sorted keys and no timestamps, and a
gzip stream with a fixed header (no name, mtime 0).

Standard library only. Called by build-guest-image.sh, which does the host-side checks.
Prints the manifest digest on stdout.
"""

import argparse
import hashlib
import io
import json
import os
import shutil
import struct
import sys
import tarfile
import tempfile
import zlib

AGENT_PATH = "opt/boxedclaw/boxedclaw-agent"
AGENT_UID = 1000
AGENT_GID = 1000

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "agent:x:1000:1000:BoxedClaw agent:/workspace:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\nagent:x:1000:\nnogroup:x:65534:\n"


def fail(msg):
    sys.exit("mkoci: error: " + msg)


def check_elf_x86_64(path, what):
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        fail("%s (%s) is not an ELF binary" % (what, path))
    if head[4] != 2 or head[5] != 1:
        fail("%s (%s) is not a 64-bit little-endian ELF" % (what, path))
    (machine,) = struct.unpack_from("<H", head, 18)
    if machine != 62:
        fail("%s (%s) is not an x86-64 binary (e_machine=%d); the image is linux/amd64" % (what, path, machine))


class Layer:
    """The layer's entries, keyed by path without a leading or trailing slash."""

    def __init__(self, mtime):
        self.mtime = mtime
        self.entries = {}

    def _info(self, name, kind, mode, uid, gid):
        if name in self.entries:
            fail("duplicate layer entry " + name)
        parent = os.path.dirname(name)
        if parent and parent not in self.entries:
            self.dir(parent)
        ti = tarfile.TarInfo(name)
        ti.type = kind
        ti.mode = mode
        ti.uid, ti.gid = uid, gid
        ti.uname = ti.gname = ""
        ti.mtime = self.mtime
        return ti

    def dir(self, name, mode=0o755, uid=0, gid=0):
        self.entries[name] = (self._info(name, tarfile.DIRTYPE, mode, uid, gid), None)

    def file(self, name, data, mode=0o644, uid=0, gid=0):
        ti = self._info(name, tarfile.REGTYPE, mode, uid, gid)
        ti.size = len(data)
        self.entries[name] = (ti, data)

    def symlink(self, name, target):
        ti = self._info(name, tarfile.SYMTYPE, 0o777, 0, 0)
        ti.linkname = target
        self.entries[name] = (ti, None)

    def tar(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            # Sorted paths: a parent always comes before what it holds.
            for name in sorted(self.entries):
                ti, data = self.entries[name]
                tar.addfile(ti, io.BytesIO(data) if data is not None else None)
        return buf.getvalue()


def gzip_fixed(data):
    """RFC 1952 gzip with a fixed header: no file name, mtime 0, XFL=2 (max compression), OS=255."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    body = comp.compress(data) + comp.flush()
    header = b"\x1f\x8b\x08\x00" + b"\x00\x00\x00\x00" + b"\x02\xff"
    trailer = struct.pack("<II", zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)
    return header + body + trailer


def canonical_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def build(args):
    if args.script_agent:
        with open(args.agent, "rb") as f:
            if f.read(2) != b"#!":
                fail("--script-agent: %s does not start with #!" % args.agent)
    else:
        check_elf_x86_64(args.agent, "agent binary")
    check_elf_x86_64(args.busybox, "busybox")
    with open(args.agent, "rb") as f:
        agent = f.read()
    with open(args.busybox, "rb") as f:
        busybox = f.read()

    layer = Layer(args.epoch)
    for d in ("bin", "dev", "etc", "opt", "opt/boxedclaw", "proc", "sys", "usr", "usr/bin"):
        layer.dir(d)
    layer.dir("root", 0o700)
    layer.dir("tmp", 0o1777)
    layer.dir("workspace", 0o755, AGENT_UID, AGENT_GID)
    layer.file("bin/busybox", busybox, 0o755)
    for applet in sorted(set(args.applets)):
        if not applet or "/" in applet or applet in (".", "..", "busybox"):
            fail("bad applet name %r" % applet)
        layer.symlink("bin/" + applet, "busybox")
    layer.symlink("usr/bin/env", "../../bin/busybox")
    layer.file("etc/passwd", PASSWD.encode(), 0o644)
    layer.file("etc/group", GROUP.encode(), 0o644)
    layer.file(AGENT_PATH, agent, 0o555)

    tar_bytes = layer.tar()
    diff_id = sha256(tar_bytes)
    if args.no_gzip:
        layer_blob, layer_mt = tar_bytes, MT_LAYER_TAR
    else:
        layer_blob, layer_mt = gzip_fixed(tar_bytes), MT_LAYER_GZIP

    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": "%d:%d" % (AGENT_UID, AGENT_GID),
            "WorkingDir": "/workspace",
            "Env": ["PATH=/bin:/usr/bin", "HOME=/workspace"],
            "Entrypoint": ["/" + AGENT_PATH],
            "Labels": {
                "org.opencontainers.image.title": "boxedclaw-guest",
                "org.boxedclaw.agent.sha256": hashlib.sha256(agent).hexdigest(),
                "org.boxedclaw.busybox.sha256": hashlib.sha256(busybox).hexdigest(),
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    config_blob = canonical_json(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": sha256(config_blob), "size": len(config_blob)},
        "layers": [{"mediaType": layer_mt, "digest": sha256(layer_blob), "size": len(layer_blob)}],
    }
    manifest_blob = canonical_json(manifest)
    manifest_digest = sha256(manifest_blob)
    index = {
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [
            {
                "mediaType": MT_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest_blob),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {"org.opencontainers.image.ref.name": args.tag},
            }
        ],
    }
    files = {
        "oci-layout": canonical_json({"imageLayoutVersion": "1.0.0"}),
        "index.json": canonical_json(index),
    }
    for blob in (layer_blob, config_blob, manifest_blob):
        files["blobs/sha256/" + hashlib.sha256(blob).hexdigest()] = blob
    return files, manifest_digest, len(tar_bytes), len(layer_blob)


def write_layout(out, files):
    out = os.path.abspath(out)
    if os.path.lexists(out):
        if not os.path.isdir(out) or os.path.islink(out):
            fail("%s exists and is not a directory" % out)
        if os.listdir(out) and not os.path.isfile(os.path.join(out, "oci-layout")):
            fail("%s is not empty and is not an OCI image layout; choose another --out" % out)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=".mkoci.", dir=parent)
    try:
        for rel, data in sorted(files.items()):
            path = os.path.join(stage, rel)
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
            os.chmod(path, 0o644)
        for d in ("blobs", "blobs/sha256", ""):
            os.chmod(os.path.join(stage, d), 0o755)
        old = None
        if os.path.lexists(out):
            old = tempfile.mkdtemp(prefix=".mkoci-old.", dir=parent)
            os.rmdir(old)
            os.rename(out, old)
        os.rename(stage, out)
        stage = None
        if old:
            shutil.rmtree(old)
    finally:
        if stage:
            shutil.rmtree(stage, ignore_errors=True)
    return out


def verify_layout(out):
    """Re-reads the layout and checks every digest, size and the layer's diff_id."""

    def blob(desc):
        algo, hexd = desc["digest"].split(":", 1)
        with open(os.path.join(out, "blobs", algo, hexd), "rb") as f:
            data = f.read()
        if sha256(data) != desc["digest"] or len(data) != desc["size"]:
            fail("blob %s does not match its descriptor" % desc["digest"])
        return data

    with open(os.path.join(out, "oci-layout"), "rb") as f:
        if json.load(f).get("imageLayoutVersion") != "1.0.0":
            fail("bad oci-layout")
    with open(os.path.join(out, "index.json"), "rb") as f:
        index = json.load(f)
    (mdesc,) = index["manifests"]
    manifest = json.loads(blob(mdesc))
    config = json.loads(blob(manifest["config"]))
    (ldesc,) = manifest["layers"]
    data = blob(ldesc)
    if ldesc["mediaType"] == MT_LAYER_GZIP:
        import gzip

        data = gzip.decompress(data)
    if sha256(data) != config["rootfs"]["diff_ids"][0]:
        fail("layer diff_id mismatch")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
    if AGENT_PATH not in names or "bin/sh" not in names:
        fail("layer lacks the agent or /bin/sh")
    return mdesc["digest"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agent", required=True, help="static boxedclaw-agent binary")
    p.add_argument("--busybox", required=True, help="static busybox binary")
    p.add_argument("--out", required=True, help="OCI layout directory to (re)write")
    p.add_argument("--applet", dest="applets", action="append", default=[], help="busybox applet to link in /bin (repeatable)")
    p.add_argument("--epoch", type=int, default=None, help="mtime of every entry (default: $SOURCE_DATE_EPOCH or 0)")
    p.add_argument("--tag", default="latest", help="org.opencontainers.image.ref.name in index.json")
    p.add_argument("--no-gzip", action="store_true", help="store the layer as an uncompressed tar")
    p.add_argument("--script-agent", action="store_true", help="the agent is a #! script (test images only)")
    args = p.parse_args()
    if args.epoch is None:
        env = os.environ.get("SOURCE_DATE_EPOCH", "0") or "0"
        try:
            args.epoch = int(env)
        except ValueError:
            fail("SOURCE_DATE_EPOCH is not an integer: %r" % env)
    if not 0 <= args.epoch < 8**11:
        fail("epoch out of range for a tar header: %d" % args.epoch)
    if "sh" not in args.applets:
        fail("the applets must include sh")

    files, digest, tar_size, blob_size = build(args)
    out = write_layout(args.out, files)
    if verify_layout(out) != digest:
        fail("index.json does not point at the manifest just written")
    print("mkoci: wrote %s (layer tar %d bytes, blob %d bytes)" % (out, tar_size, blob_size), file=sys.stderr)
    print(digest)


if __name__ == "__main__":
    main()

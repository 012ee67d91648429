"""Check that our Open Inference Protocol protos are wire-compatible with Triton's.

Compiles proto/inference/grpc_service.proto (and the model_config.proto it imports) with
grpc_tools.protoc, then compares them against the descriptors that tritonclient ships
(tritonclient.grpc.service_pb2 and tritonclient.grpc.model_config_pb2), from whatever
environment this runs in:

- every message and enum we define exists upstream, in the matching file, as the same kind;
- every field we define has upstream's name, number, type, label (repeated or not), type name
  (for message and enum fields), oneof membership, proto3 `optional` flag and map-ness;
- every enum we define has exactly upstream's values (names and numbers);
- grpc_service.proto is complete: it has every upstream message, nested message and field,
  and the GRPCInferenceService has exactly upstream's methods, each with the same input and
  output types and client/server streaming flags;
- model_config.proto may be a subset: the upstream fields and messages it leaves out are
  listed (not an error).

Exits 0 when everything matches, 1 on any mismatch (each printed), 2 if protoc fails.

    python python/check_oip_proto.py [--proto-root DIR] [--descriptor-set FILE] [--quiet]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from tritonclient.grpc import model_config_pb2, service_pb2

REPO = Path(__file__).resolve().parents[1]
SERVICE_FILE = "inference/grpc_service.proto"
CONFIG_FILE = "inference/model_config.proto"
PACKAGE = "inference"

F = descriptor_pb2.FieldDescriptorProto


def compile_protos(proto_root: Path) -> descriptor_pb2.FileDescriptorSet:
    """Compile our protos with grpc_tools.protoc into a FileDescriptorSet."""
    from grpc_tools import protoc  # imported here: only needed without --descriptor-set

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "oip.pb"
        rc = protoc.main(
            ["protoc", f"-I{proto_root}", f"--descriptor_set_out={out}", "--include_imports", SERVICE_FILE]
        )
        if rc != 0:
            print(f"protoc failed (exit {rc})", file=sys.stderr)
            sys.exit(2)
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def upstream_file(module) -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(fdp)
    return fdp


def collect(fdp: descriptor_pb2.FileDescriptorProto) -> tuple[dict, dict]:
    """Every message and enum of a file, nested ones included, by full name (".pkg.Outer.Inner")."""
    messages: dict[str, descriptor_pb2.DescriptorProto] = {}
    enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}

    def walk_message(prefix: str, msg: descriptor_pb2.DescriptorProto) -> None:
        name = f"{prefix}.{msg.name}"
        messages[name] = msg
        for nested in msg.nested_type:
            walk_message(name, nested)
        for enum in msg.enum_type:
            enums[f"{name}.{enum.name}"] = enum

    top = f".{fdp.package}"
    for msg in fdp.message_type:
        walk_message(top, msg)
    for enum in fdp.enum_type:
        enums[f"{top}.{enum.name}"] = enum
    return messages, enums


def field_signature(msg: descriptor_pb2.DescriptorProto, field: descriptor_pb2.FieldDescriptorProto) -> dict:
    in_oneof = field.HasField("oneof_index")
    return {
        "number": field.number,
        "type": F.Type.Name(field.type),
        "label": F.Label.Name(field.label),
        "type_name": field.type_name,
        # A proto3 `optional` field sits in a synthetic oneof; compare that flag, not its name.
        "oneof": msg.oneof_decl[field.oneof_index].name if in_oneof and not field.proto3_optional else None,
        "proto3_optional": field.proto3_optional,
    }


def is_map_entry(msg: descriptor_pb2.DescriptorProto) -> bool:
    return msg.options.map_entry


class Checker:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.omitted: list[str] = []

    def error(self, text: str) -> None:
        self.errors.append(text)

    def compare_file(self, ours: descriptor_pb2.FileDescriptorProto, theirs: descriptor_pb2.FileDescriptorProto,
                     complete: bool) -> None:
        if ours.package != PACKAGE:
            self.error(f"{ours.name}: package {ours.package!r}, expected {PACKAGE!r}")
        if ours.syntax != "proto3":
            self.error(f"{ours.name}: syntax {ours.syntax!r}, expected 'proto3'")
        our_msgs, our_enums = collect(ours)
        their_msgs, their_enums = collect(theirs)

        for name, enum in our_enums.items():
            if name not in their_enums:
                self.error(f"enum {name}: not in upstream {theirs.name}")
                continue
            ours_v = {v.name: v.number for v in enum.value}
            theirs_v = {v.name: v.number for v in their_enums[name].value}
            if ours_v != theirs_v:
                self.error(f"enum {name}: values {ours_v} != upstream {theirs_v}")

        for name, msg in our_msgs.items():
            if name not in their_msgs:
                self.error(f"message {name}: not in upstream {theirs.name}")
                continue
            up = their_msgs[name]
            if is_map_entry(msg) != is_map_entry(up):
                self.error(f"message {name}: map_entry {is_map_entry(msg)} != upstream {is_map_entry(up)}")
            up_fields = {f.name: f for f in up.field}
            for field in msg.field:
                where = f"field {name}.{field.name}"
                if field.name not in up_fields:
                    self.error(f"{where}: not in upstream")
                    continue
                mine, want = field_signature(msg, field), field_signature(up, up_fields[field.name])
                for key, value in mine.items():
                    if value != want[key]:
                        self.error(f"{where}: {key} {value!r} != upstream {want[key]!r}")
            our_field_names = {f.name for f in msg.field}
            for field in up.field:
                if field.name not in our_field_names:
                    text = f"field {name}.{field.name} = {field.number}"
                    if complete:
                        self.error(f"{text}: missing")
                    else:
                        self.omitted.append(text)

        def parent_defined(name: str) -> bool:
            # List only the outermost part left out, not what is nested in it.
            parent = name.rsplit(".", 1)[0]
            return parent == f".{PACKAGE}" or parent in our_msgs

        for name in their_msgs.keys() - our_msgs.keys():
            if complete:
                self.error(f"message {name}: missing")
            elif not is_map_entry(their_msgs[name]) and parent_defined(name):
                self.omitted.append(f"message {name}")
        for name in their_enums.keys() - our_enums.keys():
            if complete:
                self.error(f"enum {name}: missing")
            elif parent_defined(name):
                self.omitted.append(f"enum {name}")

        self.compare_services(ours, theirs, complete)

    def compare_services(self, ours: descriptor_pb2.FileDescriptorProto, theirs: descriptor_pb2.FileDescriptorProto,
                         complete: bool) -> None:
        their_services = {s.name: s for s in theirs.service}
        our_services = {s.name: s for s in ours.service}
        for name, svc in our_services.items():
            if name not in their_services:
                self.error(f"service {name}: not in upstream {theirs.name}")
                continue
            up = {m.name: m for m in their_services[name].method}
            mine = {m.name: m for m in svc.method}
            for missing in sorted(up.keys() - mine.keys()):
                self.error(f"rpc {name}.{missing}: missing")
            for extra in sorted(mine.keys() - up.keys()):
                self.error(f"rpc {name}.{extra}: not in upstream")
            for method_name in sorted(mine.keys() & up.keys()):
                a, b = mine[method_name], up[method_name]
                for key in ("input_type", "output_type", "client_streaming", "server_streaming"):
                    if getattr(a, key) != getattr(b, key):
                        self.error(f"rpc {name}.{method_name}: {key} {getattr(a, key)!r} != upstream {getattr(b, key)!r}")
        if complete:
            for name in sorted(their_services.keys() - our_services.keys()):
                self.error(f"service {name}: missing")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proto-root", type=Path, default=REPO / "proto", help="the -I folder of our protos")
    parser.add_argument("--descriptor-set", type=Path, help="a FileDescriptorSet to check instead of compiling")
    parser.add_argument("--quiet", action="store_true", help="do not list the omitted model_config parts")
    args = parser.parse_args()

    if args.descriptor_set:
        fds = descriptor_pb2.FileDescriptorSet.FromString(args.descriptor_set.read_bytes())
    else:
        fds = compile_protos(args.proto_root)
    files = {f.name: f for f in fds.file}
    for required in (SERVICE_FILE, CONFIG_FILE):
        if required not in files:
            print(f"MISMATCH: {required} not in the descriptor set (has {sorted(files)})")
            return 1

    checker = Checker()
    checker.compare_file(files[SERVICE_FILE], upstream_file(service_pb2), complete=True)
    checker.compare_file(files[CONFIG_FILE], upstream_file(model_config_pb2), complete=False)

    if not args.quiet and checker.omitted:
        print(f"Left out of {CONFIG_FILE} (unknown fields to clients, allowed):")
        for line in sorted(checker.omitted):
            print(f"  {line}")
    for line in checker.errors:
        print(f"MISMATCH: {line}")
    if checker.errors:
        print(f"FAIL: {len(checker.errors)} mismatch(es) against tritonclient's descriptors")
        return 1
    print("OK: our OIP protos match tritonclient's grpc_service.proto and model_config.proto descriptors")
    return 0


if __name__ == "__main__":
    sys.exit(main())

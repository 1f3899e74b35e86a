"""Oracle side of tests/torch_save.rs.

usage: torch_save.py OURS RESAVED
    Loads OURS (written by clipflow) with torch.load(weights_only=True) and
    prints a JSON description of what it holds: the Python type of every
    value (OrderedDict told apart from dict) and each tensor's dtype and
    shape. Checks the archive is laid out as torch.save lays it out (the
    same entries under a root named after the file, every entry's bytes
    64-byte aligned). Writes RESAVED with torch.save:
    {"epoch": 0, "name": "resaved", "state_dict": {}, "optimizer": <loaded>},
    so clipflow's reader can compare the loaded values with what it wrote.
"""
import collections
import json
import os
import struct
import sys
import tempfile
import zipfile

import torch


def describe(value):
    if isinstance(value, torch.Tensor):
        return ["tensor", str(value.dtype), list(value.shape)]
    if type(value) is collections.OrderedDict or type(value) is dict:
        items = [[describe(k), describe(v)] for k, v in value.items()]
        return [type(value).__name__, items]
    if type(value) in (list, tuple):
        return [type(value).__name__, [describe(v) for v in value]]
    if value is None or type(value) in (bool, int, float, str, bytes):
        return [type(value).__name__]
    raise TypeError(f"unexpected {type(value)}")


def entries(path):
    """Entry names and their data offsets, from the local headers."""
    raw = open(path, "rb").read()
    found = {}
    for info in zipfile.ZipFile(path).infolist():
        at = info.header_offset
        name_len, extra_len = struct.unpack("<HH", raw[at + 26 : at + 30])
        found[info.filename] = at + 30 + name_len + extra_len
    return found


ours, resaved = sys.argv[1:]
loaded = torch.load(ours, weights_only=True)

our_entries = entries(ours)
misaligned = {name: at for name, at in our_entries.items() if at % 64}
assert not misaligned, f"entries not 64-byte aligned: {misaligned}"
with tempfile.TemporaryDirectory() as tmp:
    reference = os.path.join(tmp, os.path.basename(ours))
    torch.save(loaded, reference)
    torch_entries = set(entries(reference)) - {
        name for name in entries(reference) if name.endswith(".data/serialization_id")
    }
assert set(our_entries) == torch_entries, f"{sorted(our_entries)} != {sorted(torch_entries)}"

torch.save({"epoch": 0, "name": "resaved", "state_dict": {}, "optimizer": loaded}, resaved)
print(json.dumps(describe(loaded)))

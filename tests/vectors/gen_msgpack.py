#!/usr/bin/env python3
"""Records reference MessagePack-RPC bytes with the real kong-pdk (PyPI 0.36).

Run in a venv with `kong-pdk==0.36` and `msgpack` installed:
    python3 tests/vectors/gen_msgpack.py > tests/vectors/msgpack.json

Requests are packed by `msgpack.packb` (the encoder the Python server decodes
with); replies are whatever kong-pdk's server writes back while a small plugin
makes PDK calls. The Rust tests compare the engine's requests with these bytes
and replay the replies through the decoder at every split point.
"""
import json
import os
import socket
import sys
import tempfile
import threading

import msgpack
from kong_pdk.listener import Server
from kong_pdk.server import PluginServer

PLUGIN = '''
Schema = ({"message": {"type": "string"}},)
version = "0.1.0"
priority = 7

class Plugin(object):
    def __init__(self, config):
        self.config = config

    def access(self, kong):
        host, _ = kong.request.get_header("host")
        headers, _ = kong.request.get_headers()
        body, _ = kong.request.get_raw_body()
        _, err = kong.nope.missing(1, "two")
        kong.response.set_header("x-result", "%s|%s|%s|%s" % (host, sorted(headers), body, err))
'''


def main():
    out = sys.stdout
    sys.stdout = sys.stderr  # kong-pdk logs to stdout
    d = tempfile.mkdtemp()
    with open(os.path.join(d, "vhello.py"), "w") as f:
        f.write(PLUGIN)
    ps = PluginServer(plugin_dir=d)
    ours, theirs = socket.socketpair()
    t = threading.Thread(target=Server(ps).handle, args=(theirs, None), daemon=True)
    t.start()
    unpacker = msgpack.Unpacker(strict_map_key=False)

    conversation = []

    def call(label, msg):
        req = msgpack.packb(msg)
        ours.sendall(req)
        rep = b""
        while True:
            chunk = ours.recv(65536)
            rep += chunk
            unpacker.feed(chunk)
            try:
                decoded = unpacker.unpack()
                break
            except msgpack.OutOfData:
                continue
        conversation.append({"label": label, "request": req.hex(), "reply": rep.hex()})
        return decoded

    r = call("start_instance", [0, 1, "plugin.StartInstance", [{"Name": "vhello", "Config": '{"message":"hi"}'}]])
    iid = r[3]["Id"]
    r = call("handle_event", [0, 2, "plugin.HandleEvent", [{"InstanceId": iid, "EventName": "access"}]])
    eid = r[3]["EventId"]
    call("step_string", [0, 3, "plugin.Step", [{"EventId": eid, "Data": "example.com"}]])
    call("step_multimap", [0, 4, "plugin.StepMultiMap",
                           [{"EventId": eid, "Data": {"host": ["example.com"], "accept": ["a", "b"], "x-e": []}}]])
    call("step_raw_body", [0, 5, "plugin.Step", [{"EventId": eid, "Data": b"\x00\xffbody"}]])
    call("step_error", [0, 6, "plugin.StepError", [{"EventId": eid, "Data": "could not find pdk method: kong.nope.missing"}]])
    call("step_nil", [0, 7, "plugin.Step", [{"EventId": eid}]])
    call("close_instance", [0, 8, "plugin.CloseInstance", [iid]])
    call("no_instance", [0, 9, "plugin.HandleEvent", [{"InstanceId": iid, "EventName": "access"}]])

    # Request shapes the conversation does not cover.
    shapes = {
        "step_empty_map": msgpack.packb([0, 10, "plugin.StepMultiMap", [{"EventId": 3, "Data": {}}]]).hex(),
        "step_big_ids": msgpack.packb([0, 70000, "plugin.HandleEvent",
                                       [{"InstanceId": 2 ** 40, "EventName": "log"}]]).hex(),
        "close_negative": msgpack.packb([0, 300, "plugin.CloseInstance", [-5]]).hex(),
        "step_credential": msgpack.packb([0, 11, "plugin.StepCredential",
                                          [{"EventId": 1, "Data": {"id": "c1", "consumer_id": "u1"}}]]).hex(),
    }
    # Values as msgpack-python packs them (use_bin_type: str -> str, bytes -> bin).
    values = {
        "int_small": msgpack.packb(5).hex(),
        "int_neg": msgpack.packb(-33).hex(),
        "int_2p53": msgpack.packb(2 ** 53).hex(),
        "int_neg_2p53": msgpack.packb(-(2 ** 53)).hex(),
        "float_half": msgpack.packb(0.5).hex(),
        "float_big": msgpack.packb(2.0 ** 60).hex(),
        "float_whole_py": msgpack.packb(2.0).hex(),
        "str": msgpack.packb("héllo").hex(),
        "bin": msgpack.packb(b"\x00\xff").hex(),
        "array": msgpack.packb([1, "a", True, None]).hex(),
        "empty_array": msgpack.packb([]).hex(),
        "empty_map": msgpack.packb({}).hex(),
        "nested": msgpack.packb({"a": {"b": [1.5, False]}}).hex(),
    }
    json.dump({"generator": "kong-pdk 0.36 / msgpack " + msgpack.version.__str__(),
               "conversation": conversation, "requests": shapes, "values": values},
              out, indent=1)
    out.write("\n")


main()

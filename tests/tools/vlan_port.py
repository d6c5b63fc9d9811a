#!/usr/bin/env python3
"""A userspace 802.1Q access port, for kernels without 8021q or bridge VLAN filtering.

vlan_port.py ACCESS TRUNK VID: frames arriving untagged on ACCESS leave TRUNK tagged VID;
frames arriving on TRUNK tagged VID leave ACCESS untagged; everything else on TRUNK
(untagged, other VLANs) is dropped. The kernel takes the tag out of received frames and
reports it in PACKET_AUXDATA; an inline tag is handled as well.
"""
import select, socket, struct, sys

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_OUTGOING = 4
TP_STATUS_VLAN_VALID = 1 << 4

access_if, trunk_if, vid = sys.argv[1], sys.argv[2], int(sys.argv[3])


def open_sock(ifname):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    s.bind((ifname, 0))
    return s


def recv(s):
    data, anc, _flags, addr = s.recvmsg(65536, socket.CMSG_SPACE(20))
    if addr[2] == PACKET_OUTGOING:
        return None, None
    tag = None
    for level, kind, cdata in anc:
        if level == SOL_PACKET and kind == PACKET_AUXDATA and len(cdata) >= 20:
            status, _len, _snap, _mac, _net, tci, _tpid = struct.unpack("IIIHHHH", cdata[:20])
            if status & TP_STATUS_VLAN_VALID:
                tag = tci & 0x0FFF
    if tag is None and len(data) >= 18 and data[12:14] == b"\x81\x00":
        tag = struct.unpack("!H", data[14:16])[0] & 0x0FFF
        data = data[:12] + data[16:]
    return data, tag


access, trunk = open_sock(access_if), open_sock(trunk_if)
print(f"vlan_port: {access_if} (untagged) <-> {trunk_if} (VLAN {vid})", flush=True)
while True:
    ready, _, _ = select.select([access, trunk], [], [])
    for s in ready:
        data, tag = recv(s)
        if data is None or len(data) < 14:
            continue
        if s is access and tag is None:
            trunk.send(data[:12] + struct.pack("!HH", 0x8100, vid) + data[12:])
        elif s is trunk and tag == vid:
            access.send(data)

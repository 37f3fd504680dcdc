"""The GRE checksum on transmit: derived in O(1) from the inner TCP/UDP checksum, against summing the bytes.

Times `Tunnel.encapsulate_header` for a 1,500-byte inner TCP packet on a tunnel
with key, sequence numbers and checksums, first as it is (encap.inner_sum),
then with the payload summed byte by byte (the previous code), interleaved over
`--rounds`, and plain gre beside them. Pure CPU, no namespaces.

    python3 benchmarks/micro_checksum.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scapy.layers.inet import IP, TCP  # noqa: E402

from usertunnel.core import encap  # noqa: E402
from usertunnel.core.checksum import ones_complement_sum  # noqa: E402
from usertunnel.core.params import Mode, TunnelParams  # noqa: E402

A, B = bytes([198, 51, 100, 1]), bytes([198, 51, 100, 2])
NUMBER = 20000


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    inner = bytes(IP(src="203.0.113.1", dst="203.0.113.2") / TCP(sport=40000, dport=5201) / (b"x" * 1460))
    ksc = encap.Tunnel(TunnelParams("k", Mode.GRE, A, B, ikey=1, okey=1, iseq=True, oseq=True, icsum=True, ocsum=True))
    plain = encap.Tunnel(TunnelParams("p", Mode.GRE, A, B))
    derived = encap.inner_sum
    times: dict[str, list[float]] = {"gre": [], "key+seq+csum, derived sum": [], "key+seq+csum, full sum": []}
    for _ in range(args.rounds):
        times["gre"].append(timeit.timeit(lambda: plain.encapsulate_header(inner), number=NUMBER) / NUMBER)
        encap.inner_sum = derived
        times["key+seq+csum, derived sum"].append(
            timeit.timeit(lambda: ksc.encapsulate_header(inner), number=NUMBER) / NUMBER
        )
        encap.inner_sum = ones_complement_sum  # type: ignore[assignment]
        times["key+seq+csum, full sum"].append(
            timeit.timeit(lambda: ksc.encapsulate_header(inner), number=NUMBER) / NUMBER
        )
    encap.inner_sum = derived
    print(f"`python3 benchmarks/micro_checksum.py --rounds {args.rounds}`: encapsulate_header, 1,500-byte inner TCP,")
    print(f"median [min–max] over {args.rounds} interleaved rounds of {NUMBER:,} calls.\n")
    print("| variant | µs per packet |")
    print("|---|---:|")
    for name, values in times.items():
        us = [v * 1e6 for v in values]
        print(f"| {name} | {statistics.median(us):.2f} [{min(us):.2f}–{max(us):.2f}] |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

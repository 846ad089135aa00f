"""How fast the test driver answers: lookup_by_name + info() pairs, and a lifecycle round trip.

    .venv/bin/python bench/bench_test_driver.py [PAIRS]

Target: 10,000 ``lookup_by_name`` + ``info()`` pairs in under 1 s. Prints the time of the
best of three runs, the rate, and (for context) a define/start/suspend/resume/destroy/undefine
cycle with a subscriber attached.
"""

from __future__ import annotations

import sys
import time

import trio

import asvirt

TARGET_S = 1.0
DOMAIN_XML = """<domain type='test'>
  <name>bench{n}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type>hvm</type></os>
</domain>
"""


async def lookups(conn: asvirt.Connection, pairs: int, names: list[str]) -> float:
    start = time.perf_counter()
    for i in range(pairs):
        dom = await conn.lookup_by_name(names[i % len(names)])
        await dom.info()
    return time.perf_counter() - start


async def lifecycle(conn: asvirt.Connection, cycles: int) -> float:
    start = time.perf_counter()
    async with conn.subscribe() as events:
        for i in range(cycles):
            dom = await conn.define_xml(DOMAIN_XML.format(n=f"-cycle{i}"))
            await dom.start()
            await dom.suspend()
            await dom.resume()
            await dom.destroy()
            await dom.undefine()
            while events.pending():
                events.receive_nowait()
    return time.perf_counter() - start


async def main(pairs: int) -> int:
    async with asvirt.open("test:///default") as conn:
        # The default domain plus a hundred more, half of them running.
        names = ["test"]
        for n in range(100):
            dom = await conn.define_xml(DOMAIN_XML.format(n=n))
            if n % 2:
                await dom.start()
            names.append(dom.name)
        best = min([await lookups(conn, pairs, names) for _ in range(3)])
        cycles = 1000
        cycle_s = await lifecycle(conn, cycles)
    ok = best < TARGET_S * pairs / 10_000
    print(
        f"test driver: {pairs} lookup_by_name + info() pairs in {best:.3f} s "
        f"({pairs / best:,.0f} pairs/s, {best / pairs * 1e6:.1f} us each); "
        f"target < {TARGET_S * pairs / 10_000:.2f} s: {'OK' if ok else 'MISSED'}"
    )
    print(
        f"test driver: {cycles} define/start/suspend/resume/destroy/undefine cycles in "
        f"{cycle_s:.3f} s ({cycle_s / cycles * 1e3:.2f} ms each)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 10_000))

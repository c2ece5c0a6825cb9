"""Ten lines a new user might run first; `make package-check` runs it in a bare venv."""

import asyncio

import aiorcu


async def main() -> None:
    domain = aiorcu.Domain(name="smoke")
    cell = aiorcu.RcuCell({"limit": 1}, domain=domain)
    async with domain.read():
        assert cell.get()["limit"] == 1
    assert await cell.replace({"limit": 2}) == {"limit": 1}
    pages = aiorcu.Bitmap(64, domain=domain, initial=True)
    report = await pages.commit(aiorcu.BitmapTransaction(ops=[aiorcu.Revoke(start=0, count=8)]))
    assert report.restricted and report.synchronized
    print("smoke ok:", aiorcu.__version__, aiorcu.backend_info().mechanism)


asyncio.run(main())

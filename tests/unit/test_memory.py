from __future__ import annotations

import asyncio

from vauban.memory import MemoryReleaser


def test_the_heap_is_trimmed_once_the_last_reconcile_of_a_wave_ends() -> None:
    trims: list[int] = []

    def trim(pad: int) -> int:
        trims.append(pad)
        return 1

    async def wave() -> None:
        releaser = MemoryReleaser(delay=0.05)
        releaser._trim = trim

        async def reconcile(seconds: float) -> None:
            async with releaser.busy():
                await asyncio.sleep(seconds)

        await asyncio.gather(reconcile(0.01), reconcile(0.03), reconcile(0.02))
        assert trims == []  # not before the delay
        await asyncio.sleep(0.1)
        assert trims == [0]
        async with releaser.busy():  # a new wave cancels nothing it should not
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)

    asyncio.run(wave())
    assert trims == [0, 0]


def test_trimming_works_on_this_c_library() -> None:
    MemoryReleaser().release()

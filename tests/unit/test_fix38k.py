"""fix38k (noticed by review rev38c): where torch's ``_shutdown_workers`` itself raised in
``training.data.LoaderBatches.close`` (called from ``__next__``'s error path, or directly), the new exception's
traceback held the DataLoader's iterator (``close``'s locals, torch's frames), so the iterator and what it holds
lived on until the cyclic garbage collector ran, as rev37e found for the loader's own errors."""
from __future__ import annotations

import weakref

import pytest
from test_fix37e import _Numbers, no_gc  # noqa: F401 - the fixture is used by name

from training.data import LoaderBatches, make_loader


def _failing_shutdown(batches: LoaderBatches, monkeypatch) -> weakref.ref:
    """The loader's next shut-down ends its workers, then raises (patched on the class: a function kept on the
    instance would hold the iterator in a cycle of its own)."""
    iterator = batches._batches                        # noqa: SLF001 - the test breaks torch's shut-down
    cls, failed = type(iterator), []
    real = cls._shutdown_workers

    def shutdown(self) -> None:
        real(self)                                      # the workers end, then the shut-down fails (once)
        if not failed:
            failed.append(True)
            raise OSError("shut-down failed")

    monkeypatch.setattr(cls, "_shutdown_workers", shutdown)
    return weakref.ref(iterator)


def test_a_failing_shutdown_in_the_error_path_keeps_no_iterator(no_gc, monkeypatch) -> None:  # noqa: F811
    batches = LoaderBatches(make_loader(_Numbers(10, fail_at=2), 1))
    assert int(next(batches)) == 0
    iterator = _failing_shutdown(batches, monkeypatch)
    with pytest.raises(OSError, match="shut-down failed") as caught:
        for _ in batches:
            pass
    assert "broken at 2" in str(caught.value.__context__)   # the loader's own error stays chained
    assert iterator() is None                               # nothing the exception holds keeps the iterator
    with pytest.raises(StopIteration):
        next(batches)


def test_a_failing_shutdown_on_close_keeps_no_iterator(no_gc, monkeypatch) -> None:  # noqa: F811
    batches = LoaderBatches(make_loader(_Numbers(100), 1))
    assert int(next(batches)) == 0
    iterator = _failing_shutdown(batches, monkeypatch)
    with pytest.raises(OSError, match="shut-down failed") as caught:
        batches.close()
    assert caught.value.__traceback__ is not None           # the exception kept, as a caller may keep it
    assert iterator() is None
    batches.close()                                         # closed: harmless again

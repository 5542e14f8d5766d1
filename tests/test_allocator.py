import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spawner.core.allocator import (
    AllocationError,
    GPULedger,
    NotEnoughGPUs,
    QuotaExceeded,
    check_quota,
    choose_gpus,
)
from spawner.core.inventory import GPU, Inventory


def grouped(*sizes: int, style: str = "group") -> Inventory:
    """GPUs "a0".."a3", "b0".. in groups "a", "b"…: NVLink-like islands or MIG-like parents."""
    gpus = []
    index = 0
    for g, size in enumerate(sizes):
        name = "abcdefgh"[g]
        for i in range(size):
            if style == "group":
                gpus.append(GPU(id=f"{name}{i}", index=index, group=name))
                index += 1
            else:  # MIG devices: all on physical GPU g, so they share its index
                gpus.append(GPU(id=f"{name}{i}", index=g, parent=name))
        if style != "group":
            index = g + 1
    return Inventory(gpus)


def whole(n: int) -> Inventory:
    return Inventory([GPU(id=f"GPU-{i:04x}", index=i, uuid=f"GPU-{i:04x}") for i in range(n)])


TWO_ISLANDS = grouped(4, 4)
TWO_MIG_GPUS = grouped(4, 4, style="mig")


@pytest.mark.parametrize(
    ("inventory", "busy", "count", "expected"),
    [
        (TWO_ISLANDS, set(), 0, ()),
        (TWO_ISLANDS, set(), 1, ("a0",)),
        # best fit: the partly used group first, whole groups stay free
        (TWO_ISLANDS, {"a0"}, 1, ("a1",)),
        (TWO_ISLANDS, {"a0"}, 3, ("a1", "a2", "a3")),
        (TWO_ISLANDS, {"b2"}, 2, ("b0", "b1")),
        (TWO_ISLANDS, {"a0", "a1", "b0"}, 2, ("a2", "a3")),
        (TWO_ISLANDS, {"a0", "a1", "a2", "b0"}, 2, ("b1", "b2")),
        # the group that cannot take the whole request is skipped
        (TWO_ISLANDS, {"a0"}, 4, ("b0", "b1", "b2", "b3")),
        # no group fits: the fullest groups are drained first (b has 2 free, a has 3)
        (TWO_ISLANDS, {"a0", "b0", "b1"}, 4, ("a1", "a2", "b2", "b3")),
        (grouped(2, 3, 4), {"c0"}, 5, ("a0", "a1", "b0", "b1", "b2")),
        (grouped(1, 1, 4), set(), 2, ("c0", "c1")),
        (grouped(1, 1, 4), set(), 1, ("a0",)),
        # MIG devices are packed onto one physical GPU
        (TWO_MIG_GPUS, {"b3"}, 1, ("b0",)),
        (TWO_MIG_GPUS, {"b3"}, 2, ("b0", "b1")),
        # whole GPUs without groups: lowest index first
        (whole(4), {"GPU-0001"}, 2, ("GPU-0000", "GPU-0002")),
        # busy may use any alias; unknown names are ignored
        (whole(4), {"0", "GPU-0002", "GPU-ffff", "7"}, 2, ("GPU-0001", "GPU-0003")),
    ],
)
def test_choose_gpus(
    inventory: Inventory, busy: set[str], count: int, expected: tuple[str, ...]
) -> None:
    assert choose_gpus(inventory, busy, count) == expected


@pytest.mark.parametrize(
    ("inventory", "busy", "count", "message"),
    [
        (
            whole(8),
            {f"GPU-{i:04x}" for i in range(7)},
            2,
            "2 GPUs requested but only 1 of 8 is free",
        ),
        (
            whole(8),
            {f"GPU-{i:04x}" for i in range(5)},
            4,
            "4 GPUs requested but only 3 of 8 are free",
        ),
        (whole(2), {"0", "1"}, 1, "1 GPU requested but all 2 are in use"),
        (whole(2), set(), 4, "4 GPUs requested but this host has only 2"),
        (Inventory(), set(), 1, "1 GPU requested but this host has no GPUs"),
    ],
)
def test_choose_gpus_not_enough(
    inventory: Inventory, busy: set[str], count: int, message: str
) -> None:
    with pytest.raises(NotEnoughGPUs) as info:
        choose_gpus(inventory, busy, count)
    assert str(info.value) == message
    assert info.value.requested == count
    assert info.value.total == len(inventory)


@pytest.mark.parametrize("count", [-1, True, 1.0])
def test_choose_gpus_rejects_bad_counts(count: object) -> None:
    with pytest.raises(AllocationError, match="whole number"):
        choose_gpus(whole(2), set(), count)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"requested": 1, "held": 2, "limit": 2, "scope": "group 'students'"},
            "GPU quota: you hold 2 GPUs, the limit for you is 2 (group 'students'); "
            "stop a GPU server first",
        ),
        (
            {"requested": 4, "held": 0, "limit": 2, "scope": "per user"},
            "GPU quota: 4 GPUs requested, the limit for you is 2 (per user); "
            "choose a profile with fewer GPUs",
        ),
        (
            {"requested": 2, "held": 1, "limit": 2, "scope": ""},
            "GPU quota: you hold 1 GPU and ask for 2 more, the limit for you is 2; "
            "stop a GPU server or choose a profile with fewer GPUs",
        ),
        (
            {"requested": 1, "held": 0, "limit": 0, "scope": "group 'guests'"},
            "GPU quota: GPU servers are not available to you (group 'guests')",
        ),
    ],
)
def test_check_quota_refuses(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(QuotaExceeded) as info:
        check_quota(**kwargs)  # type: ignore[arg-type]
    assert str(info.value) == message
    assert isinstance(info.value, AllocationError)


@pytest.mark.parametrize(
    ("requested", "held", "limit"),
    [(1, 0, None), (1, 100, None), (2, 0, 2), (1, 1, 2), (0, 5, 2), (0, 0, 0)],
)
def test_check_quota_allows(requested: int, held: int, limit: int | None) -> None:
    check_quota(requested=requested, held=held, limit=limit, scope="per user")


# -- the ledger -----------------------------------------------------------------------------


def test_ledger_claim_release_round_trip() -> None:
    ledger = GPULedger(whole(4))
    assert ledger.claim("alice/", 2) == ("GPU-0000", "GPU-0001")
    assert ledger.claim("bob/", 1, external={"2"}) == ("GPU-0003",)
    assert ledger.claim("carol/", 0) == ()
    assert ledger.holders() == {"alice/": ("GPU-0000", "GPU-0001"), "bob/": ("GPU-0003",)}
    assert ledger.busy() == {"GPU-0000", "GPU-0001", "GPU-0003"}
    assert ledger.free_count() == 1
    assert ledger.free_count(external={"GPU-0002", "GPU-0003"}) == 0
    assert ledger.held_by("alice/") == ("GPU-0000", "GPU-0001")
    assert ledger.held_by("carol/") == ()
    with pytest.raises(NotEnoughGPUs, match="2 GPUs requested but only 1 of 4 is free"):
        ledger.claim("carol/", 2)
    assert ledger.release("alice/") == ("GPU-0000", "GPU-0001")
    assert ledger.release("alice/") == ()
    assert ledger.free_count() == 3


def test_ledger_refuses_a_second_claim_by_the_same_holder() -> None:
    ledger = GPULedger(whole(4))
    ledger.claim("alice/train", 1)
    with pytest.raises(AllocationError, match="'alice/train' already holds 1 GPU \\(GPU-0000\\)"):
        ledger.claim("alice/train", 1)
    assert ledger.holders() == {"alice/train": ("GPU-0000",)}


def test_ledger_restore() -> None:
    ledger = GPULedger(whole(4))
    assert ledger.restore("alice/", ["2", "GPU-0000", "GPU-dead"]) == ("GPU-0000", "GPU-0002")
    assert ledger.restore("alice/", ["GPU-0000", "GPU-0002"]) == ("GPU-0000", "GPU-0002")
    with pytest.raises(AllocationError, match="'alice/' holds them"):
        ledger.restore("bob/", ["GPU-0002", "GPU-0003"])
    assert ledger.held_by("bob/") == ()
    assert ledger.restore("alice/", []) == ()
    assert ledger.holders() == {}
    assert ledger.claim("bob/", 3) == ("GPU-0000", "GPU-0001", "GPU-0002")


def test_ledger_sync_replaces_the_view_and_reports_conflicts() -> None:
    ledger = GPULedger(whole(4))
    ledger.claim("gone/", 2)
    conflicts = ledger.sync(
        {
            "alice/": ["GPU-0001", "GPU-0009"],
            "bob/": ["1", "3"],
            "carol/": ["GPU-dead"],
        }
    )
    assert conflicts == ["GPU GPU-0001 is used by 2 servers at once: 'alice/', 'bob/'"]
    assert ledger.holders() == {"alice/": ("GPU-0001",), "bob/": ("GPU-0001", "GPU-0003")}
    assert ledger.free_count() == 2
    assert ledger.release("bob/") == ("GPU-0001", "GPU-0003")
    assert ledger.busy() == {"GPU-0001"}  # alice still holds it
    assert ledger.sync({}) == []
    assert ledger.holders() == {}


# -- properties -----------------------------------------------------------------------------

HOLDERS = ("alice/", "bob/", "carol/gpu", "dave/")


@st.composite
def inventories(draw: st.DrawFn) -> Inventory:
    sizes = draw(st.lists(st.integers(1, 4), min_size=0, max_size=4))
    style = draw(st.sampled_from(["group", "mig", "whole"]))
    if style == "whole":
        return whole(sum(sizes))
    return grouped(*sizes, style=style)


@settings(max_examples=100, deadline=None)
@given(inventory=inventories(), data=st.data())
def test_ledger_never_double_allocates(inventory: Inventory, data: st.DataObject) -> None:
    ledger = GPULedger(inventory)
    all_ids = frozenset(inventory.ids())
    subsets = st.frozensets(st.sampled_from(sorted(all_ids))) if all_ids else st.just(frozenset())
    model: dict[str, tuple[str, ...]] = {}
    for _ in range(data.draw(st.integers(1, 20), label="steps")):
        holder = data.draw(st.sampled_from(HOLDERS), label="holder")
        if data.draw(st.booleans(), label="claim?"):
            count = data.draw(st.integers(0, len(inventory) + 1), label="count")
            external = data.draw(subsets, label="external")
            held_before = ledger.busy()
            try:
                ids = ledger.claim(holder, count, external=external)
            except NotEnoughGPUs as e:
                assert not model.get(holder)
                free = all_ids - held_before - external
                assert len(free) < count
                assert (e.requested, e.free, e.total) == (count, len(free), len(inventory))
                continue
            except AllocationError:
                assert model.get(holder)
                continue
            assert not model.get(holder)
            assert len(ids) == len(set(ids)) == count
            assert set(ids) <= all_ids
            assert not set(ids) & external
            assert not set(ids) & held_before
            if ids:
                model[holder] = ids
        else:
            assert ledger.release(holder) == model.pop(holder, ())
        assert ledger.holders() == model
        held = [gpu_id for ids in model.values() for gpu_id in ids]
        assert len(held) == len(set(held))  # no id held by two holders
        assert ledger.busy() == frozenset(held)
        external = data.draw(subsets, label="external for free_count")
        assert ledger.free_count(external) + len(held) == len(inventory) - len(external - set(held))


@settings(max_examples=200, deadline=None)
@given(inventory=inventories(), data=st.data())
def test_choose_gpus_picks_free_devices_best_fit(inventory: Inventory, data: st.DataObject) -> None:
    ids = inventory.ids()
    busy = data.draw(st.frozensets(st.sampled_from(ids)) if ids else st.just(frozenset()))
    count = data.draw(st.integers(0, len(ids) + 1))
    free = [gpu for gpu in inventory if gpu.id not in busy]
    if count > len(free):
        with pytest.raises(NotEnoughGPUs):
            choose_gpus(inventory, busy, count)
        return
    chosen = choose_gpus(inventory, busy, count)
    assert len(chosen) == len(set(chosen)) == count
    assert not set(chosen) & busy
    assert chosen == choose_gpus(inventory, set(busy), count)  # deterministic
    free_per_group: dict[str, int] = {}
    for gpu in free:
        free_per_group[gpu.placement_group] = free_per_group.get(gpu.placement_group, 0) + 1
    fitting = [n for n in free_per_group.values() if n >= count]
    if count and fitting:
        groups = {inventory.resolve(gpu_id).placement_group for gpu_id in chosen}  # type: ignore[union-attr]
        assert len(groups) == 1  # the whole request lands in one group
        assert free_per_group[groups.pop()] == min(fitting)  # the tightest one


@given(
    first_is_a=st.booleans(),
    busy_slot=st.integers(0, 3),
    style=st.sampled_from(["group", "mig"]),
    external=st.booleans(),
)
def test_one_gpu_claim_packs_into_the_partly_used_group(
    first_is_a: bool, busy_slot: int, style: str, external: bool
) -> None:
    inventory = grouped(4, 4, style=style)
    group_a = "a" if first_is_a else "b"
    ledger = GPULedger(inventory)
    busy_id = f"{group_a}{busy_slot}"
    if external:
        (pick,) = ledger.claim("bob/", 1, external={busy_id})
    else:
        ledger.restore("alice/", [busy_id])
        (pick,) = ledger.claim("bob/", 1)
    assert pick.startswith(group_a)
    assert pick != busy_id

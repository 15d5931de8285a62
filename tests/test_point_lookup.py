"""A profile's point looked up in its columns equals the one its point objects give.

The re-plan asks each running segment's profile for one (size, batch, procs) point; it looks it up
in the columns instead of making every point an object (`Profile.first_point`)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from parvagpu.core.model import PointColumns, Profile, ProfilePoint

KEYS = st.tuples(st.sampled_from((1, 2, 3, 4, 7)), st.sampled_from((1, 2, 8)), st.integers(1, 3))
LATENCIES = st.floats(0.0, 2.0, allow_nan=False).map(lambda x: round(x, 4))
POINTS = st.lists(
    st.builds(lambda k, thr, lat, extra: ProfilePoint(*k, thr, lat, extra),
              KEYS, st.floats(0.0, 5000.0, allow_nan=False), LATENCIES,
              st.sampled_from(((), (("note", "a"),), (("note", "b"), ("gpu", "x"))))),
    min_size=1, max_size=40,
)


def first_by_objects(points, key):
    return next((p for p in points if (p.size, p.batch, p.procs) == key), None)


@settings(max_examples=100, deadline=None)
@given(POINTS, st.lists(KEYS, min_size=1, max_size=6))
def test_column_lookup_equals_the_point_objects(points, asked):
    """Duplicate keys (the first row in file order wins), absent keys, OOM rows and extra columns:
    both forms of a profile answer as the point objects do, field types included."""
    from_columns = Profile("m", columns=PointColumns.of(points))
    from_points = Profile("m", points)
    for key in asked + [(p.size, p.batch, p.procs) for p in points]:
        want = first_by_objects(points, key)
        for profile in (from_columns, from_points):
            got = profile.first_point(*key)
            assert got == want
            if want is not None:
                assert [type(v) for v in vars(got).values()] == [type(v) for v in vars(want).values()]
    assert from_columns._points is None  # no point objects were made
    cols = from_columns.columns
    assert [cols.point(i) for i in range(len(cols))] == list(cols.points())


def test_lookup_equals_the_point_objects_on_the_example_profiles(profiles):
    """Every (size, batch, procs) of the loaded example profiles (columns form): the lookup the
    re-plan makes gives each key's first point, as a table built from all point objects does."""
    for profile in profiles.values():
        fresh = Profile(profile.model, profile.columns.points())
        for p in fresh.points:
            key = (p.size, p.batch, p.procs)
            assert profile.first_point(*key) == first_by_objects(fresh.points, key)
        assert profile.first_point(99, 1, 1) is None

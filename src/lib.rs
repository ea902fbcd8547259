//! The root package of the dso workspace. It ships no code of its own: it exists so that the
//! end-to-end tests in `tests/` and the criterion benches in `benches/` can depend on all
//! three programs at once.

//! The engine does no I/O: its manifest names no crate that talks to a network, a disk or a
//! clock. A dependency added here would let I/O into the protocol's rules.

#[test]
fn the_engine_depends_on_nothing_that_does_io() {
    let manifest = include_str!("../Cargo.toml");
    let deps = manifest.split("[dependencies]").nth(1).and_then(|rest| rest.split("\n[").next()).unwrap_or("");
    let names: Vec<&str> =
        deps.lines().filter_map(|l| l.split(['=', '.']).next()).map(str::trim).filter(|n| !n.is_empty()).collect();
    assert_eq!(names, ["protocol", "uuid"], "the engine's dependencies changed: keep I/O out of it");
    for forbidden in ["tokio", "sqlx", "reqwest", "axum", "hyper", "futures"] {
        assert!(!deps.contains(forbidden), "the engine must not depend on {forbidden}");
    }
}

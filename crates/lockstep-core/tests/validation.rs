use lockstep_core::{check as run_check, Limits};

#[test]
fn dump() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/invalid");
    let mut names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    for p in names {
        let text = std::fs::read_to_string(&p).unwrap();
        let mut limits = Limits::default();
        let n = p.file_name().unwrap().to_str().unwrap();
        if n == "file-too-large.yaml" { limits.definition_bytes_max = 128; }
        if n == "limit-exceeded.yaml" { limits.states_max = 2; }
        let c = run_check(Some(n), &text, &limits);
        println!("== {n} compiled={}", c.compiled.is_some());
        for d in c.diagnostics { println!("{d}\n  path={}", d.path); }
    }
}

use super::*;

fn write_and_parse(records: &[(&str, &str)]) -> (String, Vec<(String, String)>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("env");
    for (name, value) in records {
        append_to(&path, name, value).unwrap();
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let vars = parse_runner_file(&text, LineEnd::Lf).unwrap();
    (text, vars)
}

fn owned(records: &[(&str, &str)]) -> Vec<(String, String)> {
    records
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

#[test]
fn plain_values_are_name_equals_value() {
    let (text, vars) = write_and_parse(&[("A", "1"), ("_b2", ""), ("C", "x=y<<z")]);
    assert_eq!(text, "A=1\n_b2=\nC=x=y<<z\n");
    assert_eq!(vars, owned(&[("A", "1"), ("_b2", ""), ("C", "x=y<<z")]));
}

#[test]
fn multiline_values_use_a_random_delimiter() {
    let (text, vars) = write_and_parse(&[("M", "one\ntwo")]);
    let first = text.lines().next().unwrap();
    let delimiter = first.strip_prefix("M<<").unwrap();
    let hex = delimiter.strip_prefix("ghadelimiter_").unwrap();
    assert_eq!(hex.len(), 32);
    assert!(hex.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(text, format!("M<<{delimiter}\none\ntwo\n{delimiter}\n"));
    assert_eq!(vars, owned(&[("M", "one\ntwo")]));
    // Fresh for every record.
    let (again, _) = write_and_parse(&[("M", "one\ntwo")]);
    assert_ne!(again, text);
}

#[test]
fn hostile_values_cannot_create_variables() {
    let hostile = [
        "x\nEVIL=1",
        "x\r\nEVIL=1",
        "x\rEVIL=1",
        "\nEVIL=1\n",
        "EVIL=1\n",
        "x\nEVIL<<EOF\nboom\nEOF",
        "x\nghadelimiter_00000000000000000000000000000000\nEVIL=1",
        "x\nEOF\nEVIL=1",
        "\n",
        "\r",
        "\n\n\n",
        "trailing\n",
        "a\r\n\r\nEVIL=1\r\n",
        "x\u{0}\nEVIL=1",
    ];
    for value in hostile {
        let records = [("FIRST", "1"), ("V", value), ("LAST", "2")];
        let (text, vars) = write_and_parse(&records);
        assert_eq!(vars, owned(&records), "value {value:?} gave {text:?}");
        // A Windows runner also ends lines at \r\n: still no extra variable, only line ends
        // inside the value may read differently.
        let windows = parse_runner_file(&text, LineEnd::CrLf).unwrap();
        let names: Vec<&str> = windows.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["FIRST", "V", "LAST"],
            "value {value:?} gave {text:?}"
        );
    }
}

#[test]
fn a_delimiter_found_in_the_value_is_regenerated() {
    // The value holds every delimiter the writer could pick only with negligible probability;
    // check the loop by feeding it a value that contains the prefix many times over.
    let value = format!("{}\nEVIL=1", "ghadelimiter_".repeat(100));
    let (_, vars) = write_and_parse(&[("V", &value)]);
    assert_eq!(vars, owned(&[("V", &value)]));
}

#[test]
fn bad_names_are_refused_and_named() {
    for name in ["", "1A", "-A", "A=B", "A<<B", "A B", "A\nB", "A\rB", "É"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env");
        let err = append_to(&path, name, "v").unwrap_err();
        assert!(err.to_string().contains(&format!("{name:?}")), "{err}");
        assert!(!path.exists() || std::fs::read(&path).unwrap().is_empty());
    }
    assert!(valid_env_name("_"));
    assert!(valid_env_name("PEERCACHE_PORT"));
    assert!(valid_env_name("peer_id2"));
    assert!(!valid_env_name("peer-id"));
    assert!(valid_output_name("peer-id"));
    assert!(valid_output_name("peer-count"));
    assert!(!valid_output_name("-x"));
}

#[test]
fn outputs_may_hold_dashes_env_names_may_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out");
    append_to(&path, "peer-id", "12D3KooW").unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "peer-id=12D3KooW\n"
    );
    // set_env refuses before looking for GITHUB_ENV.
    let err = set_env("A-B", "v").unwrap_err();
    assert!(err.to_string().contains("\"A-B\""), "{err}");
}

#[test]
fn a_file_without_a_final_newline_does_not_swallow_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("env");
    std::fs::write(&path, "OTHER=x").unwrap();
    append_to(&path, "A", "1").unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, "OTHER=x\nA=1\n");
}

#[test]
fn concurrent_writers_do_not_interleave() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("env");
    let big = "y".repeat(64 * 1024);
    std::thread::scope(|s| {
        for t in 0..4 {
            let (path, big) = (&path, &big);
            s.spawn(move || {
                for i in 0..25 {
                    append_to(path, &format!("T{t}_{i}"), &format!("{big}\n{t}")).unwrap();
                }
            });
        }
    });
    let text = std::fs::read_to_string(&path).unwrap();
    let vars = parse_runner_file(&text, LineEnd::Lf).unwrap();
    assert_eq!(vars.len(), 100);
    for (name, value) in vars {
        let t = &name[1..2];
        assert_eq!(value, format!("{big}\n{t}"));
    }
}

#[test]
fn a_missing_variable_is_a_clear_error() {
    // Uses a variable no test sets, so it is safe under the parallel test runner.
    let err = file_of("PEERCACHE_TEST_SURELY_UNSET_GITHUB_FILE").unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("--github-env needs PEERCACHE_TEST_SURELY_UNSET_GITHUB_FILE"),
        "{text}"
    );
    assert!(text.contains("run this inside a workflow step"), "{text}");
}

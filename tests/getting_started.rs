//! Getting started: the README's local recipe runs as written, and the development tools
//! refuse what cannot be meant before doing anything.

mod common;

use std::time::Duration;

use common::binary::{run_userhooks, shell, Running};
use common::TestDb;

/// The README's section on the local stack.
fn local_stack_section() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let start = readme
        .find("\n## Local stack")
        .expect("README.md has a \"## Local stack\" section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_string()
}

/// The fenced blocks of `section` with their info strings: (info, body).
fn fenced_blocks(section: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let body: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .collect();
        blocks.push((info.trim().to_string(), body.join("\n")));
    }
    blocks
}

/// The `sh` block whose first line is `marker`.
fn block<'a>(blocks: &'a [(String, String)], marker: &str) -> &'a str {
    blocks
        .iter()
        .find(|(info, body)| info == "sh" && body.starts_with(marker))
        .map(|(_, body)| body.as_str())
        .unwrap_or_else(|| {
            panic!("no ```sh block starting with {marker:?} in the local stack section")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_local_recipe_runs_as_written_and_a_webhook_arrives() {
    let section = local_stack_section();
    assert!(
        section.len() < 2600,
        "the section grew to {} bytes",
        section.len()
    );
    let blocks = fenced_blocks(&section);
    let stack_script = block(&blocks, "# terminal 1");
    let try_script = block(&blocks, "# terminal 2");
    let expected: Vec<String> = blocks
        .iter()
        .find(|(info, _)| info == "text")
        .expect("the README shows what terminal 1 prints")
        .1
        .lines()
        .map(str::to_string)
        .collect();
    assert!(!expected.is_empty());
    for port in [3333, 3334, 7376, 9610] {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} is taken: the recipe's dev stack needs it"
        );
    }

    // A fresh database, named through DATABASE_URL only: the recipe migrates it.
    let db = TestDb::unmigrated().await;
    let env = [("DATABASE_URL", db.url.as_str())];
    let mut stack = Running::spawn_shell(shell(stack_script, &env));
    stack
        .wait_for("dev stack is up", Duration::from_secs(60))
        .await;

    let tried = Running::spawn_shell(shell(try_script, &env))
        .exit_with_output(Duration::from_secs(60))
        .await;
    assert!(
        tried.0.success(),
        "terminal 2 failed:\n{}\n{}",
        tried.1,
        tried.2
    );
    assert!(
        tried.1.contains("Webhook subscription created"),
        "{}",
        tried.1
    );
    assert!(tried.1.contains("INSERT 0 1"), "{}", tried.1);
    assert!(
        tried.1.contains("Backfill started successfully"),
        "{}",
        tried.1
    );

    // Terminal 1 prints each webhook as the README shows it.
    for line in &expected {
        stack.wait_for(line, Duration::from_secs(30)).await;
    }
    // Like Ctrl-C: the signal reaches the shell and the stack, which stops cleanly.
    stack.terminate_group().await;
    stack
        .wait_for("dev stack stopped", Duration::from_secs(30))
        .await;
    assert!(!stack.stderr().contains("panicked"), "{}", stack.stderr());
}

#[tokio::test]
async fn the_emulator_refuses_faults_out_of_range_before_listening() {
    for (faults, expected) in [
        (
            r#"{"all": {"error_rate": 1.5}}"#,
            "error: --faults: all.error_rate must be a probability between 0 and 1 (got 1.5)",
        ),
        (
            r#"{"routes": {"create_sink": {"latency_ms": -20}}}"#,
            "error: --faults: routes.create_sink.latency_ms must be a whole number, 0 or more (got -20)",
        ),
    ] {
        let out = run_userhooks(
            &["emulator", "--token", "t", "--listen", "127.0.0.1:0", "--faults", faults],
            &[],
        )
        .await;
        assert_eq!(out.code, Some(1), "{out:?}");
        assert_eq!(out.error_line(), expected);
    }
}

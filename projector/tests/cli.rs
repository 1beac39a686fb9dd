//! The command line documents every setting.

use clap::{CommandFactory, Parser};
use projector::Cli;

#[test]
fn run_help_lists_every_setting_with_its_environment_variable() {
    let mut command = Cli::command();
    let help = command
        .find_subcommand_mut("run")
        .expect("a run subcommand")
        .render_long_help()
        .to_string();
    for variable in [
        "SCORES_DATABASE_URL",
        "SCORES_DATABASE_MAX_CONNECTIONS",
        "SCORES_KAFKA_BROKERS",
        "SCORES_TOPIC",
        "SCORES_TOPIC_PARTITIONS",
        "SCORES_TOPIC_REPLICATION",
        "SCORES_KAFKA_OPTIONS",
        "SCORES_CONSUMER_GROUP",
        "SCORES_BATCH_SIZE",
        "SCORES_BATCH_WAIT_MS",
        "SCORES_METRICS_ADDR",
        "SCORES_PROJECTIONS",
        "SCORES_EVENT_VERSIONS",
        "SCORES_ACC_NBR_PATTERN",
        "SCORES_GRADE_MIN",
        "SCORES_GRADE_MAX",
        "SCORES_TEXT_MAX_CHARS",
        "SCORES_LOG_FORMAT",
    ] {
        assert!(
            help.contains(variable),
            "run --help does not mention {variable}"
        );
    }
}

#[test]
fn the_top_level_help_names_every_subcommand() {
    let help = Cli::command().render_help().to_string();
    for command in [
        "migrate",
        "run",
        "rebuild",
        "status",
        "dead-letters",
        "import-legacy",
    ] {
        assert!(help.contains(command), "{command} missing from {help}");
    }
}

#[test]
fn import_legacy_help_lists_its_settings() {
    let mut command = Cli::command();
    let help = command
        .find_subcommand_mut("import-legacy")
        .expect("an import-legacy subcommand")
        .render_long_help()
        .to_string();
    for flag in [
        "--database-url",
        "SCORES_LEGACY_DATABASE_URL",
        "--table",
        "--source-name",
        "--insert-time-offset",
        "--report",
        "--max-in-flight",
        "SCORES_KAFKA_BROKERS",
        "SCORES_ACC_NBR_PATTERN",
    ] {
        assert!(
            help.contains(flag),
            "import-legacy --help does not mention {flag}"
        );
    }
}

#[test]
fn import_legacy_refuses_a_table_name_it_would_not_put_in_sql_and_a_bad_offset() {
    let parse = |extra: &[&str]| {
        let mut args = vec![
            "projector",
            "import-legacy",
            "--database-url",
            "mysql://reader@old-db/scores",
        ];
        args.extend_from_slice(extra);
        Cli::try_parse_from(args)
    };
    assert!(parse(&[]).is_ok(), "the defaults are enough");
    assert!(parse(&["--insert-time-offset", "+08:00"]).is_ok());
    for (extra, why) in [
        (
            vec!["--table", "grade`; DROP TABLE grade; --"],
            "a table name with SQL",
        ),
        (vec!["--table", ""], "an empty table name"),
        (vec!["--source-name", "a b"], "a source name with a space"),
        (
            vec!["--insert-time-offset", "China"],
            "an offset that is not one",
        ),
    ] {
        let error = parse(&extra).expect_err(why).to_string();
        assert!(error.contains("expected"), "{why}: {error}");
    }
}

#[test]
fn the_command_line_is_well_formed() {
    Cli::command().debug_assert();
}

#[test]
fn help_never_prints_a_secret_from_the_environment() {
    let subcommands: Vec<String> = Cli::command()
        .get_subcommands()
        .map(|subcommand| subcommand.get_name().to_owned())
        .collect();
    for subcommand in &subcommands {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_projector"))
            .args([subcommand.as_str(), "--help"])
            .env(
                "SCORES_DATABASE_URL",
                "mysql://p:s3cret-db@db.example/scores",
            )
            .env(
                "SCORES_LEGACY_DATABASE_URL",
                "mysql://l:s3cret-legacy@db.example/old",
            )
            .env("SCORES_KAFKA_OPTIONS", "sasl.password=s3cret-kafka")
            .output()
            .expect("running projector --help");
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{subcommand} --help failed");
        assert!(
            !help.contains("s3cret"),
            "{subcommand} --help prints a secret from the environment:\n{help}"
        );
    }
    assert!(subcommands.iter().any(|name| name == "import-legacy"));
}

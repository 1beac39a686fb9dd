//! The command line documents every setting.

use clap::CommandFactory;
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
        "SCORES_CONSUMER_INSTANCE_ID",
        "SCORES_BATCH_SIZE",
        "SCORES_BATCH_WAIT_MS",
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
    for command in ["migrate", "run", "rebuild", "status", "dead-letters"] {
        assert!(help.contains(command), "{command} missing from {help}");
    }
}

#[test]
fn the_command_line_is_well_formed() {
    Cli::command().debug_assert();
}

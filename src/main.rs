//! `babycryd`: parse flags, set up logging, run the command, map errors to exit codes.

use std::process::ExitCode;

fn main() -> ExitCode {
    babycry::cli::tune_allocator();
    let cli = babycry::cli::parse();
    let (level, json) = babycry::cli::configured_logging(&cli);
    babycry::cli::init_logging(cli.log_json || json, level.as_deref());
    match babycry::cli::execute(cli) {
        Ok(code) => code,
        Err(err) if babycry::cli::is_closed_stdout(&err) => ExitCode::SUCCESS,
        Err(err) => {
            babycry::cli::report_error(&babycry::cli::error_message(&err));
            ExitCode::from(babycry::cli::exit_code_for(&err))
        }
    }
}

//! `lockstep`: the command line for workflow authors and operators.

mod offline;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Lockstep: workflows as declared state machines, with time and trust built in.
///
/// Write a workflow as YAML, check it with `validate`, draw it with `graph`, and unit-test it
/// offline with `test`, all without a cluster. Exit codes: 0 success, 1 the files have errors
/// or a test failed, 2 the command line is wrong.
#[derive(Debug, Parser)]
#[command(name = "lockstep", version, propagate_version = true)]
pub struct Cli {
    /// Output format for results.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Readable text for people.
    Table,
    /// One JSON document for scripts.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check workflow definitions: syntax, states, transitions, CEL, SLAs, calendars.
    ///
    /// Takes files and folders (folders are searched for *.yaml and *.yml files that start
    /// with a `workflow:` key). Prints every problem with its file, line, column, code and a
    /// hint. Exits 1 if any file has an error; warnings alone exit 0.
    ///
    /// Example: lockstep validate examples/workflows
    Validate {
        /// Definition files or folders.
        #[arg(required = true)]
        paths: Vec<std::path::PathBuf>,
        /// Treat warnings as errors.
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Draw a workflow as a state diagram (Mermaid or Graphviz DOT).
    ///
    /// Example: lockstep graph examples/workflows/purchase-order.yaml --format dot | dot -Tsvg > po.svg
    Graph {
        /// The definition file.
        file: std::path::PathBuf,
        #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
        format: GraphFormat,
    },
    /// Run scenario tests against the pure engine, offline.
    ///
    /// A scenario file names a workflow, declares actors and lists scenarios of steps:
    /// create, transition, event, advance (time travel that fires due timers), task steps,
    /// each with expectations (state, refusal code, SLA status, armed timers, tasks, data).
    /// Takes files and folders (*.yaml files with a `scenarios:` key).
    ///
    /// Example: lockstep test examples/scenarios
    Test {
        /// Scenario files or folders.
        #[arg(required = true)]
        paths: Vec<std::path::PathBuf>,
    },
    /// Print the JSON Schema of the definition format (for editors).
    Schema,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum GraphFormat {
    Mermaid,
    Dot,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate { paths, deny_warnings } => offline::validate(&paths, deny_warnings, cli.output),
        Command::Graph { file, format } => {
            let format = match format {
                GraphFormat::Mermaid => lockstep_core::graph::Format::Mermaid,
                GraphFormat::Dot => lockstep_core::graph::Format::Dot,
            };
            offline::graph(&file, format)
        }
        Command::Test { paths } => offline::test(&paths, cli.output),
        Command::Schema => {
            print!("{}", lockstep_core::schema::definition_schema());
            Ok(true)
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

//! Command-line entry: parse, then run, check, explain, receipts, probe or discovery.

use clap::Parser;
use x402_gateway::cli::{self, Cli, Command};

#[global_allocator]
static GLOBAL: x402_alloc::MiMalloc = x402_alloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run { config, ready_file } => exit_code(
            x402_gateway::server::run(x402_gateway::server::RunOptions { config, ready_file }),
            |()| {},
        ),
        Command::Check { config } => {
            let (report, code) = cli::check(&config);
            if code == 0 {
                println!("{report}");
            } else {
                eprintln!("{report}");
            }
            code
        }
        Command::Explain {
            config,
            method,
            url,
            headers,
        } => exit_code(cli::explain(&config, &method, &url, &headers), |v| {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }),
        Command::Receipts {
            config,
            ledger,
            since,
            until,
            rules,
            format,
        } => exit_code(
            cli::receipts(&cli::ReceiptsArgs {
                config,
                ledger,
                since,
                until,
                rules,
                format,
            }),
            |report| print!("{report}"),
        ),
        Command::Probe { url, timeout_ms } => exit_code(
            cli::probe(&url, std::time::Duration::from_millis(timeout_ms)),
            |line| println!("{line}"),
        ),
        Command::Discovery {
            config,
            format,
            base_url,
        } => exit_code(
            cli::discovery(&config, format, base_url.as_deref()),
            |doc| println!("{doc}"),
        ),
    };
    std::process::exit(code);
}

/// 0 after printing a command's result, 1 after printing its error to stderr.
fn exit_code<T, E: std::fmt::Display>(result: Result<T, E>, print: impl FnOnce(T)) -> i32 {
    match result {
        Ok(v) => {
            print(v);
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

//! Command-line entry: parse, then run, check, explain, receipts or probe.

use clap::Parser;
use x402_gateway::cli::{self, Cli, Command};

#[global_allocator]
static GLOBAL: x402_alloc::MiMalloc = x402_alloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run { config, ready_file } => {
            match x402_gateway::server::run(x402_gateway::server::RunOptions { config, ready_file })
            {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("{e}");
                    1
                }
            }
        }
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
        } => match cli::explain(&config, &method, &url, &headers) {
            Ok(v) => {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                0
            }
            Err(e) => {
                eprintln!("{e}");
                1
            }
        },
        Command::Receipts {
            config,
            ledger,
            since,
            until,
            rules,
            format,
        } => match cli::receipts(&cli::ReceiptsArgs {
            config,
            ledger,
            since,
            until,
            rules,
            format,
        }) {
            Ok(report) => {
                print!("{report}");
                0
            }
            Err(e) => {
                eprintln!("{e}");
                1
            }
        },
        Command::Probe { url, timeout_ms } => {
            match cli::probe(&url, std::time::Duration::from_millis(timeout_ms)) {
                Ok(line) => {
                    println!("{line}");
                    0
                }
                Err(e) => {
                    eprintln!("{e}");
                    1
                }
            }
        }
    };
    std::process::exit(code);
}

use clap::Parser;

fn main() {
    let cli = fleetscale::cli::Cli::parse();
    if let Err(failure) = fleetscale::cli::execute(cli) {
        eprintln!("{failure}");
        std::process::exit(failure.exit_code());
    }
}

use clap::Parser;

fn main() {
    limit_malloc_arenas();
    let cli = fleetscale::cli::Cli::parse();
    if let Err(failure) = fleetscale::cli::execute(cli) {
        eprintln!("{failure}");
        std::process::exit(failure.exit_code());
    }
}

/// glibc gives threads that allocate at once arenas of their own (up to eight per core),
/// and memory freed in one arena is not reused by another. The blocking pool that runs
/// many fleets' decisions spreads their buffers over as many arenas, and with 100 mock
/// fleets on two cores a third of the agent's memory sat idle in them (./scripts/many-fleets.py:
/// peak RSS 91 MB, 65 MB with one arena per core). Its threads mostly wait, so one arena
/// per core costs no speed. `MALLOC_ARENA_MAX` in the environment still overrides it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let arenas = libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt sets a parameter of glibc's allocator; it is called before any
    // other thread exists, and takes no pointer.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

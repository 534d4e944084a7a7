/// mimalloc: the broker allocates small, short-lived buffers on every request from
/// several threads; glibc's malloc spent about a tenth of the request time there,
/// partly waiting on arena locks. The library leaves the choice to its users.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    credbroker::cli::main()
}

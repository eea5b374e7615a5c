fn main() -> std::process::ExitCode {
    changegate::cli::run()
}

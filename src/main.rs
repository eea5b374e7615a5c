fn main() -> std::process::ExitCode {
    // Before any thread exists: libgit2's first use sets OpenSSL's
    // certificate variables in the environment, which is only sound while
    // the process is single-threaded.
    changegate::github::init_git_transport();
    changegate::git::init_object_reads();
    changegate::cli::run()
}

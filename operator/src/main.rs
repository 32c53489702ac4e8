fn main() -> std::process::ExitCode {
    nno::runtime::main()
}

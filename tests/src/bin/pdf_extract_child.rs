//! `agentdesk pdf-extract` for the test suite: the same child entry point and allocator as the
//! server's binary.

#[global_allocator]
static ALLOCATOR: agentdesk_agent_pdf_processing::allocator::ProcessAllocator =
    agentdesk_agent_pdf_processing::allocator::ProcessAllocator;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = agentdesk_agent_pdf_processing::child_main(&args);
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}

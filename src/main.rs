fn main() {
    std::process::exit(ma_webrtc_gateway::driver::main_entry());
}

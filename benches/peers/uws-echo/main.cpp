// uws-echo: a WebSocket echo server on uWebSockets' public API, the reference peer of
// scripts/bench-vs-uws.sh. One App on one thread, every path echoes, no TLS, no compression,
// no idle timeout, so it does the same work per message as `ringws serve`.
//
//   uws-echo [PORT]        default 0 (any free port); prints "listening on 127.0.0.1:PORT"
//
// Built by the bench script against uWebSockets and uSockets source folders the user
// supplies; none of their code is part of this project.
#include "App.h"

#include <cstdio>
#include <cstdlib>

namespace {
struct PerSocketData {};
}  // namespace

int main(int argc, char **argv) {
    int port = argc > 1 ? std::atoi(argv[1]) : 0;
    uWS::App()
        .ws<PerSocketData>("/*", {
            .compression = uWS::DISABLED,
            .maxPayloadLength = 16 * 1024 * 1024,
            .idleTimeout = 0,
            .maxBackpressure = 64 * 1024 * 1024,
            .closeOnBackpressureLimit = false,
            .resetIdleTimeoutOnSend = false,
            .sendPingsAutomatically = false,
            .message = [](auto *ws, std::string_view message, uWS::OpCode opCode) {
                ws->send(message, opCode, false);
            },
        })
        .listen("127.0.0.1", port, [](us_listen_socket_t *listener) {
            if (!listener) {
                std::fprintf(stderr, "uws-echo: cannot listen\n");
                std::exit(1);
            }
            int bound = us_socket_local_port(0, reinterpret_cast<us_socket_t *>(listener));
            std::printf("uws-echo: listening on 127.0.0.1:%d\n", bound);
            std::fflush(stdout);
        })
        .run();
    return 0;
}

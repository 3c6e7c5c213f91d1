// uws-pubsub: a pub/sub server on uWebSockets' public API, the reference peer of
// scripts/bench-fanout-capacity.sh. A connection on /pubsub/<topic> subscribes to the
// topic, and every message it sends goes to the topic's other subscribers, as in
// `ringws serve`. One App on one thread, no TLS, no compression, no idle timeout.
//
//   uws-pubsub [PORT [MAX_BACKPRESSURE]]
//       PORT              default 0 (any free port); prints "listening on 127.0.0.1:PORT"
//       MAX_BACKPRESSURE  bytes a subscriber may have queued before publishes skip it,
//                         default 4 MiB (ringws's default queue bound)
//
// Built by the bench script against uWebSockets and uSockets source folders the user
// supplies; none of their code is part of this project.
#include "App.h"

#include <cstdio>
#include <cstdlib>
#include <string>

namespace {
struct PerSocketData {
    std::string topic;
};
}  // namespace

int main(int argc, char **argv) {
    int port = argc > 1 ? std::atoi(argv[1]) : 0;
    unsigned int backpressure = argc > 2 ? std::strtoul(argv[2], nullptr, 10) : 4u << 20;
    uWS::App()
        .ws<PerSocketData>("/pubsub/*", {
            .compression = uWS::DISABLED,
            .maxPayloadLength = 16 * 1024 * 1024,
            .idleTimeout = 0,
            .maxBackpressure = backpressure,
            .closeOnBackpressureLimit = false,
            .resetIdleTimeoutOnSend = false,
            .sendPingsAutomatically = false,
            .upgrade = [](auto *res, auto *req, auto *context) {
                res->template upgrade<PerSocketData>(
                    {std::string(req->getUrl().substr(sizeof("/pubsub/") - 1))},
                    req->getHeader("sec-websocket-key"),
                    req->getHeader("sec-websocket-protocol"),
                    req->getHeader("sec-websocket-extensions"), context);
            },
            .open = [](auto *ws) { ws->subscribe(ws->getUserData()->topic); },
            .message = [](auto *ws, std::string_view message, uWS::OpCode opCode) {
                ws->publish(ws->getUserData()->topic, message, opCode, false);
            },
        })
        .listen("127.0.0.1", port, [](us_listen_socket_t *listener) {
            if (!listener) {
                std::fprintf(stderr, "uws-pubsub: cannot listen\n");
                std::exit(1);
            }
            int bound = us_socket_local_port(0, reinterpret_cast<us_socket_t *>(listener));
            std::printf("uws-pubsub: listening on 127.0.0.1:%d\n", bound);
            std::fflush(stdout);
        })
        .run();
    return 0;
}

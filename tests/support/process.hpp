// Test support: start real llmq binaries as child processes and stop them
// again (SIGTERM, then SIGKILL after a grace period), never leaving one behind.
#pragma once

#include <signal.h>
#include <sys/prctl.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace llmq::test {

class ChildProcess {
public:
    ChildProcess() = default;
    // Starts `program` with stdout and stderr appended to log_path. The child is
    // killed if the test process dies first (PR_SET_PDEATHSIG), so a crashed test
    // never leaves a cluster behind. (The signal follows the thread that forked:
    // start children from the test thread, not from short-lived helper threads.)
    ChildProcess(const std::string& program, const std::vector<std::string>& args, const std::string& log_path) {
        std::vector<std::string> all{program};
        all.insert(all.end(), args.begin(), args.end());
        std::vector<char*> argv;
        for (auto& a : all) argv.push_back(a.data());
        argv.push_back(nullptr);
        pid_t parent = getpid();
        pid_ = fork();
        if (pid_ < 0) throw std::runtime_error("cannot fork for " + program + ": " + std::strerror(errno));
        if (pid_ == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent) _exit(127);  // the parent died before prctl
            int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
            if (fd >= 0) {
                dup2(fd, 1);
                dup2(fd, 2);
                close(fd);
            }
            execv(program.c_str(), argv.data());
            _exit(127);
        }
    }
    ChildProcess(ChildProcess&& o) noexcept : pid_(o.pid_) { o.pid_ = -1; }
    ChildProcess& operator=(ChildProcess&& o) noexcept {
        stop();
        pid_ = o.pid_;
        o.pid_ = -1;
        return *this;
    }
    ~ChildProcess() { stop(); }

    pid_t pid() const { return pid_; }
    bool running() const { return pid_ > 0; }

    void kill_hard() {
        if (pid_ <= 0) return;
        ::kill(pid_, SIGKILL);
        waitpid(pid_, nullptr, 0);
        pid_ = -1;
    }
    // SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit status (or -1).
    int stop(std::chrono::milliseconds grace = std::chrono::milliseconds(10000)) {
        if (pid_ <= 0) return -1;
        ::kill(pid_, SIGTERM);
        auto deadline = std::chrono::steady_clock::now() + grace;
        int status = 0;
        while (std::chrono::steady_clock::now() < deadline) {
            if (waitpid(pid_, &status, WNOHANG) == pid_) {
                pid_ = -1;
                return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
        kill_hard();
        return -1;
    }

private:
    pid_t pid_ = -1;
};

// Runs a command line through /bin/sh, capturing stdout; returns the exit code.
inline int run_capture(const std::string& cmd, std::string& out) {
    out.clear();
    FILE* p = popen(cmd.c_str(), "r");
    if (!p) return -1;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// Waits for a file of key=value lines to appear (e.g. the broker's --endpoints-file).
inline std::map<std::string, std::string> wait_for_kv_file(const std::string& path, std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
        std::ifstream f(path);
        if (f) {
            std::map<std::string, std::string> kv;
            std::string line;
            while (std::getline(f, line))
                if (auto eq = line.find('='); eq != std::string::npos) kv[line.substr(0, eq)] = line.substr(eq + 1);
            if (!kv.empty()) return kv;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    throw std::runtime_error("timed out waiting for " + path);
}

// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, close).
inline int free_tcp_port() {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    socklen_t len = sizeof a;
    int port = -1;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0)
        port = ntohs(a.sin_port);
    ::close(fd);
    return port;
}

}  // namespace llmq::test

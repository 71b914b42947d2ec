// Hand-offs between the worker's threads: a bounded work queue (I/O thread →
// executors) and a mailbox with an eventfd (executors → the I/O thread's poll).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace llmq::worker {

template <class T>
class WorkQueue {
public:
    explicit WorkQueue(size_t capacity) : capacity_(capacity) {}

    // False when the queue is full or closed (the caller answers at once instead).
    [[nodiscard]] bool push(T item) {
        {
            std::lock_guard lock(mu_);
            if (closed_ || items_.size() >= capacity_) return false;
            items_.push_back(std::move(item));
        }
        cv_.notify_one();
        return true;
    }
    // The next item, or nullopt after `wait` with none, or once closed and empty.
    std::optional<T> pop(std::chrono::milliseconds wait) {
        std::unique_lock lock(mu_);
        cv_.wait_for(lock, wait, [&] { return closed_ || !items_.empty(); });
        if (items_.empty()) return std::nullopt;
        T item = std::move(items_.front());
        items_.pop_front();
        return item;
    }
    // Removes what is waiting (and returns it).
    std::deque<T> clear() {
        std::lock_guard lock(mu_);
        return std::exchange(items_, {});
    }
    void close() {
        {
            std::lock_guard lock(mu_);
            closed_ = true;
        }
        cv_.notify_all();
    }
    bool closed() const {
        std::lock_guard lock(mu_);
        return closed_;
    }
    size_t size() const {
        std::lock_guard lock(mu_);
        return items_.size();
    }

private:
    const size_t capacity_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::deque<T> items_;
    bool closed_ = false;
};

// What an executor or the query thread hands the I/O thread to send.
struct Outgoing {
    enum class Kind {
        done,       // body: an encoded proto::Done
        reply,      // body: an encoded proto::Reply
        heartbeat,  // health changed: send a heartbeat now, before what follows
    };
    Kind kind = Kind::done;
    std::string body;
};

// Many posters, one taker that polls fd() (readable when something was posted).
class Mailbox {
public:
    Mailbox();
    ~Mailbox();
    Mailbox(const Mailbox&) = delete;
    Mailbox& operator=(const Mailbox&) = delete;

    int fd() const { return fd_; }
    void post(Outgoing out);
    // Everything posted so far, in order; clears the fd's readiness.
    std::vector<Outgoing> take();

private:
    int fd_ = -1;
    std::mutex mu_;
    std::vector<Outgoing> items_;
};

}  // namespace llmq::worker

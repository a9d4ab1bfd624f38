// Helpers shared by the trainer's tests (test_trainer.cpp, test_distill.cpp): token data files,
// metrics logs, and uniattn-train processes (one per rank) with their exit codes.
#pragma once

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_util.h"

namespace uniattn::train_test {

namespace fs = std::filesystem;

// `n` JSONL records of random ids below 97 with a prompt (loss_mask 0) and a response (1).
inline void write_tokens(const fs::path& p, int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::ofstream f(p);
  for (int i = 0; i < n; ++i) {
    const int len = 8 + static_cast<int>(rng() % 17);
    const int prompt = 2 + static_cast<int>(rng() % static_cast<unsigned>(len - 3));
    nlohmann::json ids = nlohmann::json::array(), mask = nlohmann::json::array();
    for (int j = 0; j < len; ++j) {
      ids.push_back(static_cast<int>(rng() % 97));
      mask.push_back(j >= prompt ? 1 : 0);
    }
    f << nlohmann::json{{"ids", ids}, {"loss_mask", mask}}.dump() << "\n";
  }
}

inline std::vector<nlohmann::json> read_metrics(const fs::path& out) {
  std::vector<nlohmann::json> v;
  std::ifstream f(out / "metrics.jsonl");
  std::string line;
  while (std::getline(f, line))
    if (!line.empty()) v.push_back(nlohmann::json::parse(line));
  return v;
}

inline std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

inline void write_file(const fs::path& p, const std::string& bytes) {
  std::ofstream f(p, std::ios::binary);
  f << bytes;
}

inline fs::path cli() { return test::data_dir().parent_path() / "uniattn-train"; }

// Runs args[0] with `env` added; its stderr goes to `log` when given.
inline pid_t spawn(const std::vector<std::string>& args, const std::vector<std::string>& env,
                   const fs::path& log = {}) {
  const pid_t pid = fork();
  if (pid == 0) {
    if (!log.empty()) {
      std::FILE* f = std::fopen(log.c_str(), "w");
      if (f) dup2(fileno(f), 2);
    }
    std::vector<char*> av, ev;
    for (const auto& a : args) av.push_back(const_cast<char*>(a.c_str()));
    av.push_back(nullptr);
    for (char** e = environ; *e; ++e) ev.push_back(*e);
    for (const auto& e : env) ev.push_back(const_cast<char*>(e.c_str()));
    ev.push_back(nullptr);
    execve(args[0].c_str(), av.data(), ev.data());
    _exit(127);
  }
  return pid;
}

// A TCP port on 127.0.0.1 that no one listens on now (the kernel's choice for port 0), so that
// concurrent test processes do not meet at one rendezvous port.
inline int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  EXPECT_GE(fd, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
                  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  close(fd);
  EXPECT_TRUE(ok);
  return ntohs(a.sin_port);
}

inline int exit_code(int status) {
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

inline int wait_exit(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return exit_code(status);
}

// Like wait_exit, but kills the process after `limit` and then returns -1.
inline int wait_exit_within(pid_t pid, std::chrono::seconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  int status = 0;
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > end) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return exit_code(status);
}

}  // namespace uniattn::train_test

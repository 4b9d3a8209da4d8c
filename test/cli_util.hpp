#pragma once
// Runs the safetensors-torch binary as a child process for the CLI tests.

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <string>
#include <vector>

#include "test_util.hpp"

extern char** environ;

namespace safetensors::test {

struct CliResult {
  bool exited = false;  ///< false: killed by a signal (or not started)
  int code = -1;        ///< exit status when exited
  std::string out;
  std::string err;
};

/// Runs `program` with `args`, stdin empty; stdout and stderr are captured
/// through files in `scratch_dir`.
inline CliResult run_program(const std::string& program, std::vector<std::string> args,
                             const std::string& scratch_dir) {
  const std::string out_path = scratch_dir + "/.stdout", err_path = scratch_dir + "/.stderr";
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&actions, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  args.insert(args.begin(), program);
  std::vector<char*> argv;
  for (std::string& s : args) argv.push_back(s.data());
  argv.push_back(nullptr);

  CliResult r;
  pid_t pid = 0;
  const int spawned = posix_spawn(&pid, program.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (spawned != 0) {
    ADD_FAILURE() << "cannot run " << program << ": errno " << spawned;
    return r;
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  r.exited = WIFEXITED(status);
  r.code = r.exited ? WEXITSTATUS(status) : -1;
  r.out = read_bytes(out_path);
  r.err = read_bytes(err_path);
  return r;
}

/// Runs the tool (SAFETENSORS_CLI_PATH) with `args`.
inline CliResult run_cli(std::vector<std::string> args, const std::string& scratch_dir) {
  return run_program(SAFETENSORS_CLI_PATH, std::move(args), scratch_dir);
}

}  // namespace safetensors::test

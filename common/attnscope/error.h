#pragma once
// The one error type of the attnscope libraries.
//
// Library code never prints or exits: it throws an Error that names its subject (a path, a
// CSV column, a tensor name, a flag) and says what was expected and what was found. The
// command's main() catches it and prints "error: <what()>".

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace attnscope {

/// Concatenates any streamable values into one string: concat("got ", 3, " columns").
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  return out.str();
}

class Error : public std::runtime_error {
 public:
  /// subject: what the error is about ("data/labels.csv:12", "tensor 'fc.weight'");
  /// message: what was expected and what was found.
  Error(std::string subject, std::string message)
      : std::runtime_error(subject.empty() ? message : subject + ": " + message),
        subject_(std::move(subject)),
        message_(std::move(message)) {}

  const std::string& subject() const noexcept { return subject_; }
  const std::string& message() const noexcept { return message_; }

 private:
  std::string subject_;
  std::string message_;
};

/// Throws Error(subject, concat(args...)) unless cond holds.
template <typename... Args>
void check(bool cond, const std::string& subject, const Args&... args) {
  if (!cond) throw Error(subject, concat(args...));
}

}  // namespace attnscope

// HookRunner against real processes (small shell scripts written to a temp dir per test) and
// real HTTP(S) servers on loopback (cpp-httplib, ephemeral ports). Timeouts here are the
// runner's own; nothing sleeps to wait for time.
#include "companion/hooks.h"

#include <errno.h>
#include <fcntl.h>
#include <httplib.h>
#include <openssl/bn.h>
#include <openssl/hmac.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "shared/core/clock.h"
#include "shared/core/handles.h"
#include "shared/core/log.h"
#include "shared/x509/cert.h"
#include "shared/x509/key.h"
#include "shared/x509/openssl_error.h"

namespace certfleet::companion {
namespace {

namespace sh = shared;
using Json = nlohmann::json;
using sh::Code;
using std::chrono::milliseconds;
using std::chrono::seconds;
using SteadyClock = std::chrono::steady_clock;

const sh::WallTime kStart = sh::FromUnixSeconds(1767225600);  // 2026-01-01T00:00:00Z
constexpr char kSecret[] = "0123456789abcdef0123456789abcdef";

// ---- test infrastructure (failures throw; gtest reports them) ----

template <class T>
T Must(sh::Result<T> r, const std::string& what) {
  if (!r) throw std::runtime_error(what + ": " + r.error().ToString());
  return std::move(*r);
}

class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/certfleet-hooks-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Creates `path` with exactly `mode` (umask notwithstanding).
void WriteFile(const std::string& path, const std::string& content, mode_t mode) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) throw std::runtime_error("open " + path + ": " + std::strerror(errno));
  bool ok = ::write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size()) &&
            ::fchmod(fd, mode) == 0;
  ::close(fd);
  if (!ok) throw std::runtime_error("write " + path);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

size_t CountOpenFds() {
  size_t n = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    (void)entry;
    ++n;
  }
  return n;
}

// True once `pid` no longer runs (gone, or a zombie awaiting whoever adopted it).
bool ProcessGone(pid_t pid) {
  std::string stat = ReadFile("/proc/" + std::to_string(pid) + "/stat");
  if (stat.empty()) return true;
  auto paren = stat.rfind(')');
  return paren == std::string::npos || paren + 2 >= stat.size() || stat[paren + 2] == 'Z' || stat[paren + 2] == 'X';
}

bool WaitGone(pid_t pid, std::chrono::milliseconds limit) {
  auto deadline = SteadyClock::now() + limit;
  while (!ProcessGone(pid)) {
    if (SteadyClock::now() > deadline) return false;
    std::this_thread::sleep_for(milliseconds(5));  // polling a condition under a deadline
  }
  return true;
}

pid_t ReadPid(const std::string& path) {
  std::string text = ReadFile(path);
  return text.empty() ? -1 : static_cast<pid_t>(std::stol(text));
}

// No child of this process is left unreaped.
bool NoChildrenLeft() {
  int status = 0;
  return waitpid(-1, &status, WNOHANG) < 0 && errno == ECHILD;
}

Json PreProvisionInput(const std::string& serial) {
  PreProvisionHookInput in;
  in.claim_certificate_id = std::string(64, 'a');
  in.certificate_id = std::string(64, 'b');
  in.certificate_pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
  in.template_arn = "arn:certfleet:iot:::provisioningtemplate/gateways";
  in.client_id = "claim-0001";
  in.parameters = {{"SerialNumber", serial}, {"Model", "gw-7"}};
  return BuildPreProvisionHookInput(in);
}

// ---- exec hooks ----

class HookExecTest : public ::testing::Test {
 protected:
  // A /bin/sh script with `body`, mode 0755 unless told; returns its absolute path.
  std::string Script(const std::string& name, const std::string& body, mode_t mode = 0755) {
    std::string path = dir_ / name;
    WriteFile(path, "#!/bin/sh\n" + body + "\n", mode);
    return path;
  }
  HookSpec Exec(std::vector<std::string> argv, milliseconds timeout = milliseconds(5000),
                int64_t max_output = 64 * 1024) {
    HookConfig c;
    c.command = std::move(argv);
    c.timeout = timeout;
    c.max_output_bytes = max_output;
    return Must(ParseHookSpec(c), "ParseHookSpec");
  }

  TempDir dir_;
  sh::CaptureLogger log_;
  HookRunner runner_{log_, sh::SystemClock::Instance()};
};

TEST_F(HookExecTest, AllowHookAnswerIsReturnedAndAllows) {
  auto hook = Script("allow", R"(cat >/dev/null
echo '{"allowProvisioning": true, "parameterOverrides": {"Location": "lab-3"}}')");
  HookRunInfo info;
  auto out = runner_.Run(Exec({hook}), kHookEventPreProvision, PreProvisionInput("S1"), &info);
  ASSERT_TRUE(out) << out.error().ToString();
  EXPECT_EQ(info.outcome, Code::kOk);
  EXPECT_EQ(info.exit_code, 0);
  EXPECT_EQ(info.term_signal, 0);
  auto decision = DecidePreProvision(out);
  EXPECT_TRUE(decision.allow) << decision.reason;
  EXPECT_EQ(decision.parameter_overrides, (std::map<std::string, std::string>{{"Location", "lab-3"}}));
  EXPECT_TRUE(log_.Contains("hook ran")) << "one line per run";
  EXPECT_TRUE(log_.Contains("duration_ms=")) << "latency is logged";
  EXPECT_TRUE(log_.Contains("outcome=ok"));
}

TEST_F(HookExecTest, HookReadsTheInputJsonOnStdin) {
  auto hook = Script("echo", "exec cat");
  Json input = PreProvisionInput("SN-42");
  auto out = runner_.Run(Exec({hook}), kHookEventPreProvision, input);
  ASSERT_TRUE(out) << out.error().ToString();
  EXPECT_EQ(*out, input);
  EXPECT_EQ((*out)["parameters"]["SerialNumber"], "SN-42");
  EXPECT_EQ(out->size(), 6u);
}

TEST_F(HookExecTest, DenyHookDenies) {
  auto hook = Script("deny", R"(cat >/dev/null; echo '{"allowProvisioning": false}')");
  auto out = runner_.Run(Exec({hook}), kHookEventPreProvision, PreProvisionInput("S1"));
  ASSERT_TRUE(out) << out.error().ToString();
  auto decision = DecidePreProvision(out);
  EXPECT_FALSE(decision.allow);
  EXPECT_NE(decision.reason.find("denied"), std::string::npos) << decision.reason;
}

TEST_F(HookExecTest, NonZeroExitIsAnErrorEvenWithAnAllowAnswer) {
  auto hook = Script("exit1", R"(echo '{"allowProvisioning": true}'; echo 'boom on stderr' >&2; exit 1)");
  HookRunInfo info;
  auto out = runner_.Run(Exec({hook}), kHookEventPreProvision, PreProvisionInput("S1"), &info);
  ASSERT_FALSE(out);
  EXPECT_EQ(out.error().code(), Code::kInternal);
  EXPECT_NE(out.error().message().find("status 1"), std::string::npos) << out.error().ToString();
  EXPECT_EQ(info.exit_code, 1);
  EXPECT_FALSE(DecidePreProvision(out).allow);
  EXPECT_TRUE(log_.Contains("boom on stderr")) << "stderr is logged at debug level";
  for (const auto& r : log_.records()) {
    if (r.line.find("boom on stderr") != std::string::npos) {
      EXPECT_EQ(r.level, sh::LogLevel::kDebug);
    }
  }
}

TEST_F(HookExecTest, GarbageOutputIsAnError) {
  for (const std::string& answer : {std::string("echo 'allow please'"), std::string("echo '[true]'"),
                                    std::string("echo '{\"allowProvisioning\": tru'"), std::string(":"),
                                    std::string("echo '{} {}'")}) {
    SCOPED_TRACE(answer);
    auto hook = Script("garbage-" + std::to_string(std::hash<std::string>{}(answer)), "cat >/dev/null; " + answer);
    auto out = runner_.Run(Exec({hook}), kHookEventPreProvision, PreProvisionInput("S1"));
    ASSERT_FALSE(out);
    EXPECT_EQ(out.error().code(), Code::kInvalidArgument) << out.error().ToString();
    EXPECT_FALSE(DecidePreProvision(out).allow);
  }
}

TEST_F(HookExecTest, OutputAboveTheCapIsAnError) {
  // Slightly above a small cap.
  std::string answer = R"({"allowProvisioning": true, "pad": ")" + std::string(40, 'p') + R"("})";
  auto hook = Script("over", "cat >/dev/null\necho '" + answer + "'");
  auto out = runner_.Run(Exec({hook}, milliseconds(5000), 64), kHookEventPreProvision, PreProvisionInput("S1"));
  ASSERT_FALSE(out);
  EXPECT_EQ(out.error().code(), Code::kResourceExhausted) << out.error().ToString();

  // Endless output against the default cap: stopped and killed, not read forever.
  auto endless = Script("endless", "exec /usr/bin/yes '{\"allowProvisioning\": true}'");
  auto start = SteadyClock::now();
  HookRunInfo info;
  out = runner_.Run(Exec({endless}), kHookEventPreProvision, PreProvisionInput("S1"), &info);
  ASSERT_FALSE(out);
  EXPECT_EQ(out.error().code(), Code::kResourceExhausted) << out.error().ToString();
  EXPECT_EQ(info.term_signal, SIGKILL);
  EXPECT_LT(SteadyClock::now() - start, seconds(2));
  EXPECT_TRUE(NoChildrenLeft());
}

TEST_F(HookExecTest, TimeoutKillsTheHookAndReturnsPromptly) {
  auto hook = Script("slow", "echo $$ > \"$1\"\nsleep 30 &\necho $! > \"$2\"\nwait");
  std::string pid_file = dir_ / "pid", child_file = dir_ / "child";
  auto start = SteadyClock::now();
  HookRunInfo info;
  auto out = runner_.Run(Exec({hook, pid_file, child_file}, milliseconds(200)), kHookEventPreProvision,
                         PreProvisionInput("S1"), &info);
  auto elapsed = SteadyClock::now() - start;
  ASSERT_FALSE(out);
  EXPECT_EQ(out.error().code(), Code::kDeadlineExceeded) << out.error().ToString();
  EXPECT_GE(elapsed, milliseconds(200));
  EXPECT_LT(elapsed, seconds(2));
  EXPECT_EQ(info.term_signal, SIGKILL);
  EXPECT_EQ(info.outcome, Code::kDeadlineExceeded);
  auto decision = DecidePreProvision(out);
  EXPECT_FALSE(decision.allow);
  EXPECT_NE(decision.reason.find("DEADLINE"), std::string::npos) << decision.reason;

  pid_t pid = ReadPid(pid_file);
  pid_t child = ReadPid(child_file);
  ASSERT_GT(pid, 0);
  ASSERT_GT(child, 0);
  EXPECT_TRUE(ProcessGone(pid)) << "the hook itself was killed and reaped";
  EXPECT_TRUE(WaitGone(child, seconds(2))) << "its child in the same process group was killed too";
  EXPECT_TRUE(NoChildrenLeft()) << "no zombie left behind";
}

TEST_F(HookExecTest, GrandchildHoldingStdoutOpenStillTimesOutAndIsKilled) {
  // The hook answers and exits 0 at once, but a background process keeps its stdout open:
  // the answer is not known to be complete until the deadline, and then the group dies.
  auto hook = Script("bg", "sleep 30 &\necho $! > \"$1\"\necho '{\"allowProvisioning\": true}'\nexit 0");
  std::string bg_file = dir_ / "bg";
  auto start = SteadyClock::now();
  auto out = runner_.Run(Exec({hook, bg_file}, milliseconds(200)), kHookEventPreProvision, PreProvisionInput("S1"));
  auto elapsed = SteadyClock::now() - start;
  ASSERT_FALSE(out);
  EXPECT_EQ(out.error().code(), Code::kDeadlineExceeded) << out.error().ToString();
  EXPECT_LT(elapsed, seconds(2));
  pid_t bg = ReadPid(bg_file);
  ASSERT_GT(bg, 0);
  EXPECT_TRUE(WaitGone(bg, seconds(2))) << "the grandchild was killed with the process group";
  EXPECT_TRUE(NoChildrenLeft());
}

TEST_F(HookExecTest, HookThatClosesItsPipesButKeepsRunningTimesOut) {
  auto hook = Script("closer", "exec >&- 2>&- <&-\nexec sleep 30");
  auto start = SteadyClock::now();
  auto out = runner_.Run(Exec({hook}, milliseconds(200)), kHookEventPreProvision, PreProvisionInput("S1"));
  ASSERT_FALSE(out);
  EXPECT_EQ(out.error().code(), Code::kDeadlineExceeded) << out.error().ToString();
  EXPECT_LT(SteadyClock::now() - start, seconds(2));
  EXPECT_TRUE(NoChildrenLeft());
}

TEST_F(HookExecTest, EnvironmentIsMinimalAndCwdIsRoot) {
  ASSERT_EQ(setenv("CERTFLEET_TEST_SECRET", "do-not-leak", 1), 0);
  // /proc/$$/environ is the environment the runner passed to execve, before the shell adds PWD.
  auto hook = Script("env", "cat /proc/$$/environ > \"$1\"\npwd > \"$2\"\necho '{}'");
  std::string env_file = dir_ / "env.out", cwd_file = dir_ / "cwd.out";
  auto out = runner_.Run(Exec({hook, env_file, cwd_file}), kHookEventPostEnroll, Json::object());
  unsetenv("CERTFLEET_TEST_SECRET");
  ASSERT_TRUE(out) << out.error().ToString();
  std::set<std::string> vars;
  std::string env = ReadFile(env_file);
  std::stringstream ss(env);
  for (std::string var; std::getline(ss, var, '\0');) vars.insert(var);
  EXPECT_EQ(vars, (std::set<std::string>{"PATH=/usr/bin:/bin", "LANG=C.UTF-8", "CERTFLEET_HOOK_EVENT=post-enroll"}));
  EXPECT_EQ(ReadFile(cwd_file), "/\n");
}

TEST_F(HookExecTest, ArgumentsReachTheHookLiterallyWithoutAShell) {
  std::string marker = dir_ / "pwned";
  std::vector<std::string> args = {"$(touch " + marker + ")", "`touch " + marker + "`", "a b; touch " + marker,
                                   "*", "$HOME", "'quoted'"};
  auto hook = Script("args", "out=$1\nshift\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > \"$out\"\necho '{}'");
  std::string out_file = dir_ / "args.out";
  std::vector<std::string> argv = {hook, out_file};
  argv.insert(argv.end(), args.begin(), args.end());
  auto out = runner_.Run(Exec(argv), kHookEventPreProvision, Json::object());
  ASSERT_TRUE(out) << out.error().ToString();
  std::string expected;
  for (const auto& a : args) expected += a + "\n";
  EXPECT_EQ(ReadFile(out_file), expected);
  EXPECT_FALSE(std::filesystem::exists(marker)) << "an argument was interpreted by a shell";
}

TEST_F(HookExecTest, HookThatIgnoresALargeInputDoesNotKillTheCaller) {
  // SIGPIPE keeps its default disposition here: if the runner let it through, this test
  // process would die. The hook exits without reading 1 MiB of input.
  auto previous = std::signal(SIGPIPE, SIG_DFL);
  auto hook = Script("ignore", "echo '{\"allowProvisioning\": false}'");
  Json input = PreProvisionInput("S1");
  input["certificatePem"] = std::string(1 << 20, 'x');
  auto out = runner_.Run(Exec({hook}), kHookEventPreProvision, input);
  std::signal(SIGPIPE, previous);
  ASSERT_TRUE(out) << out.error().ToString();
  EXPECT_FALSE(DecidePreProvision(out).allow);
}

TEST_F(HookExecTest, InvalidUtf8InTheInputDoesNotThrow) {
  auto hook = Script("echo", "exec cat");
  Json input = {{"parameters", {{"SerialNumber", std::string("\xff\xfe bad")}}}};
  auto out = runner_.Run(Exec({hook}), kHookEventPreProvision, input);
  ASSERT_TRUE(out) << out.error().ToString();
  EXPECT_TRUE((*out)["parameters"]["SerialNumber"].is_string());
}

TEST_F(HookExecTest, BadEventNamesAreRejected) {
  auto hook = Script("ok", "echo '{}'");
  for (std::string event : {std::string(""), std::string("Pre-Provision"), std::string("a\nX-Injected: 1"),
                            std::string(65, 'a')}) {
    auto out = runner_.Run(Exec({hook}), event, Json::object());
    ASSERT_FALSE(out);
    EXPECT_EQ(out.error().code(), Code::kInvalidArgument);
  }
}

TEST_F(HookExecTest, UnsafeExecutablesAreRejectedAtParseAndAtRun) {
  HookConfig c;
  c.command = {"hooks/allow"};
  auto spec = ParseHookSpec(c);
  ASSERT_FALSE(spec);
  EXPECT_EQ(spec.error().code(), Code::kInvalidArgument) << "not absolute";

  c.command = {dir_ / "missing"};
  spec = ParseHookSpec(c);
  ASSERT_FALSE(spec);
  EXPECT_EQ(spec.error().code(), Code::kNotFound);

  c.command = {Script("world-writable", "echo '{}'", 0757)};
  spec = ParseHookSpec(c);
  ASSERT_FALSE(spec);
  EXPECT_EQ(spec.error().code(), Code::kPermissionDenied) << spec.error().ToString();

  c.command = {Script("group-writable", "echo '{}'", 0775)};
  spec = ParseHookSpec(c);
  ASSERT_FALSE(spec);
  EXPECT_EQ(spec.error().code(), Code::kPermissionDenied);

  c.command = {Script("not-executable", "echo '{}'", 0644)};
  spec = ParseHookSpec(c);
  ASSERT_FALSE(spec);
  EXPECT_EQ(spec.error().code(), Code::kPermissionDenied);

  c.command = {dir_.path()};
  spec = ParseHookSpec(c);
  ASSERT_FALSE(spec);
  EXPECT_EQ(spec.error().code(), Code::kInvalidArgument) << "a directory";

  // Run checks again: a spec built by hand, and a file that became unsafe after loading.
  HookSpec manual;
  manual.argv = {"sh", "-c", "echo '{}'"};
  auto out = runner_.Run(manual, kHookEventPreProvision, Json::object());
  ASSERT_FALSE(out);
  EXPECT_EQ(out.error().code(), Code::kInvalidArgument);

  std::string later = Script("later", "echo '{}'");
  HookSpec loaded = Exec({later});
  ASSERT_EQ(chmod(later.c_str(), 0777), 0);
  out = runner_.Run(loaded, kHookEventPreProvision, Json::object());
  ASSERT_FALSE(out);
  EXPECT_EQ(out.error().code(), Code::kPermissionDenied);
  EXPECT_FALSE(DecidePreProvision(out).allow);
  ASSERT_EQ(chmod(later.c_str(), 0755), 0);
  EXPECT_TRUE(runner_.Run(loaded, kHookEventPreProvision, Json::object()));

  std::string gone = Script("gone", "echo '{}'");
  loaded = Exec({gone});
  ASSERT_EQ(unlink(gone.c_str()), 0);
  out = runner_.Run(loaded, kHookEventPreProvision, Json::object());
  ASSERT_FALSE(out);
  EXPECT_EQ(out.error().code(), Code::kNotFound);
}

TEST_F(HookExecTest, NoDescriptorLeaksAndNoZombies) {
  auto ok = Script("ok", "cat >/dev/null; echo '{\"allowProvisioning\": true}'");
  auto garbage = Script("garbage", "echo nope");
  auto fail = Script("fail", "exit 3");
  auto slow = Script("slow", "exec sleep 30");
  auto endless = Script("endless", "exec /usr/bin/yes");
  auto noexec = Script("noexec", "#", 0700);
  ASSERT_EQ(truncate(noexec.c_str(), 0), 0);  // an empty file: exec fails with ENOEXEC
  // Warm up: anything lazily opened once (e.g. by the logger) is opened before counting.
  ASSERT_TRUE(runner_.Run(Exec({ok}), kHookEventPreProvision, Json::object()));
  size_t before = CountOpenFds();
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(runner_.Run(Exec({ok}), kHookEventPreProvision, PreProvisionInput("S")));
    EXPECT_FALSE(runner_.Run(Exec({garbage}), kHookEventPreProvision, Json::object()));
    EXPECT_FALSE(runner_.Run(Exec({fail}), kHookEventPreProvision, Json::object()));
    EXPECT_FALSE(runner_.Run(Exec({slow}, milliseconds(50)), kHookEventPreProvision, Json::object()));
    EXPECT_FALSE(runner_.Run(Exec({endless}), kHookEventPreProvision, Json::object()));
    HookSpec s = Exec({noexec});
    EXPECT_FALSE(runner_.Run(s, kHookEventPreProvision, Json::object()));
  }
  EXPECT_EQ(CountOpenFds(), before);
  EXPECT_TRUE(NoChildrenLeft());
}

TEST_F(HookExecTest, ConcurrentRunsKeepTheirOwnInputAndOutput) {
  auto hook = Script("echo", "exec cat");
  HookSpec spec = Exec({hook});
  std::atomic<int> good{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 5; ++i) {
        Json input = {{"thread", t}, {"i", i}};
        auto out = runner_.Run(spec, kHookEventPostProvision, input);
        if (out && *out == input) ++good;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(good.load(), 40);
  EXPECT_TRUE(NoChildrenLeft());
}

TEST_F(HookExecTest, PostHookFailuresAreLoggedNotReturned) {
  auto fail = Script("fail", "exit 7");
  runner_.RunPostHook(Exec({fail}), kHookEventPostProvision, Json::object());
  bool logged = false;
  for (const auto& r : log_.records()) {
    if (r.level == sh::LogLevel::kError && r.line.find("post-hook failed") != std::string::npos &&
        r.line.find("event=post-provision") != std::string::npos) {
      logged = true;
    }
  }
  EXPECT_TRUE(logged);
}

// ---- ParseHookSpec ----

class HookSpecTest : public ::testing::Test {
 protected:
  std::string Secret(const std::string& name, const std::string& content, mode_t mode) {
    std::string path = dir_ / name;
    WriteFile(path, content, mode);
    return path;
  }
  TempDir dir_;
};

TEST_F(HookSpecTest, WebhookSpecLoadsTheSecret) {
  HookConfig c;
  c.url = "https://hooks.example.net/certfleet";
  c.secret_file = Secret("secret", std::string(kSecret) + "\n", 0600);
  c.timeout = milliseconds(1500);
  auto spec = ParseHookSpec(c);
  ASSERT_TRUE(spec) << spec.error().ToString();
  EXPECT_EQ(spec->kind, HookSpec::kWebhook);
  EXPECT_EQ(spec->hmac_secret, kSecret) << "trailing newline stripped";
  EXPECT_EQ(spec->timeout, milliseconds(1500));
  EXPECT_EQ(spec->max_output_bytes, 64u * 1024);
}

TEST_F(HookSpecTest, DefaultsMatchTheContract) {
  HookSpec spec;
  EXPECT_EQ(spec.timeout, seconds(5));
  EXPECT_EQ(spec.max_output_bytes, 65536u);
  HookConfig c;
  EXPECT_EQ(c.timeout, seconds(5));
}

TEST_F(HookSpecTest, SecretFileModeAndContentAreChecked) {
  HookConfig c;
  c.url = "https://hooks.example.net/";
  c.secret_file = Secret("loose", kSecret, 0644);
  auto spec = ParseHookSpec(c);
  ASSERT_FALSE(spec);
  EXPECT_EQ(spec.error().code(), Code::kPermissionDenied);
  EXPECT_EQ(spec.error().message().find(kSecret), std::string::npos) << "the secret is never in a message";

  c.secret_file = Secret("group", kSecret, 0640);
  spec = ParseHookSpec(c);
  ASSERT_FALSE(spec);
  EXPECT_EQ(spec.error().code(), Code::kPermissionDenied);

  c.secret_file = Secret("short", "short\n", 0600);
  spec = ParseHookSpec(c);
  ASSERT_FALSE(spec);
  EXPECT_EQ(spec.error().code(), Code::kInvalidArgument);

  c.secret_file = dir_ / "missing";
  spec = ParseHookSpec(c);
  ASSERT_FALSE(spec);
  EXPECT_EQ(spec.error().code(), Code::kNotFound);

  c.secret_file = "";
  spec = ParseHookSpec(c);
  ASSERT_FALSE(spec);
  EXPECT_EQ(spec.error().code(), Code::kInvalidArgument) << "a webhook needs a secret";
}

TEST_F(HookSpecTest, WebhookUrlRules) {
  HookConfig c;
  c.secret_file = Secret("secret", kSecret, 0600);
  for (const std::string& bad : {std::string("http://hooks.example.net/"), std::string("ftp://127.0.0.1/"),
                                 std::string("not a url"), std::string("https://user:pw@hooks.example.net/")}) {
    SCOPED_TRACE(bad);
    c.url = bad;
    auto spec = ParseHookSpec(c);
    ASSERT_FALSE(spec);
    EXPECT_EQ(spec.error().code(), Code::kInvalidArgument);
  }
  c.url = "http://127.0.0.1:8080/hook";
  EXPECT_FALSE(ParseHookSpec(c)) << "http needs allow_insecure_loopback";
  c.allow_insecure_loopback = true;
  EXPECT_TRUE(ParseHookSpec(c));
  c.url = "http://10.0.0.1:8080/hook";
  EXPECT_FALSE(ParseHookSpec(c)) << "insecure only to loopback";
}

TEST_F(HookSpecTest, InconsistentConfigsAreRejected) {
  HookConfig c;
  EXPECT_FALSE(ParseHookSpec(c)) << "neither command nor url";
  c.command = {"/bin/true"};
  c.url = "https://hooks.example.net/";
  EXPECT_FALSE(ParseHookSpec(c)) << "both";
  c.url.clear();
  c.secret_file = "/etc/secret";
  EXPECT_FALSE(ParseHookSpec(c)) << "secret_file on an exec hook";
  c.secret_file.clear();
  c.timeout = milliseconds(0);
  EXPECT_FALSE(ParseHookSpec(c));
  c.timeout = std::chrono::hours(1);
  EXPECT_FALSE(ParseHookSpec(c));
  c.timeout = seconds(5);
  c.max_output_bytes = 0;
  EXPECT_FALSE(ParseHookSpec(c));
  c.max_output_bytes = 1 << 30;
  EXPECT_FALSE(ParseHookSpec(c));
  c.max_output_bytes = 1024;
  auto spec = ParseHookSpec(c);
  ASSERT_TRUE(spec) << spec.error().ToString();
  EXPECT_EQ(spec->kind, HookSpec::kExec);
}

TEST(HookConfigCheckTest, ShapeIsCheckedWithoutTouchingFiles) {
  HookConfig c;
  c.command = {"/nonexistent/hook", "arg"};
  EXPECT_TRUE(CheckHookConfig(c).ok()) << "files are ParseHookSpec's business";
  EXPECT_EQ(ParseHookSpec(c).error().code(), Code::kNotFound);
  c.command = {"relative/hook"};
  EXPECT_EQ(CheckHookConfig(c).code(), Code::kInvalidArgument);
  c.command.clear();
  EXPECT_EQ(CheckHookConfig(c).code(), Code::kInvalidArgument) << "neither";
  c.url = "https://hooks.example.net/x";
  EXPECT_EQ(CheckHookConfig(c).code(), Code::kInvalidArgument) << "no secret_file";
  c.secret_file = "secret";
  EXPECT_EQ(CheckHookConfig(c).code(), Code::kInvalidArgument) << "relative secret_file";
  c.secret_file = "/nonexistent/secret";
  EXPECT_TRUE(CheckHookConfig(c).ok());
  c.trust_anchor_file = "ca.pem";
  EXPECT_EQ(CheckHookConfig(c).code(), Code::kInvalidArgument) << "relative trust_anchor_file";
  c.trust_anchor_file.clear();
  c.url = "http://hooks.example.net/x";
  EXPECT_EQ(CheckHookConfig(c).code(), Code::kInvalidArgument) << "plain http off loopback";
  c.command = {"/bin/true"};
  c.url = "https://hooks.example.net/x";
  EXPECT_EQ(CheckHookConfig(c).code(), Code::kInvalidArgument) << "both";
}

TEST_F(HookSpecTest, TrustAnchorFileMustHoldACertificate) {
  HookConfig c;
  c.url = "https://hooks.example.net/";
  c.secret_file = Secret("secret", kSecret, 0600);
  c.trust_anchor_file = Secret("anchor.pem", "not a certificate\n", 0644);
  auto spec = ParseHookSpec(c);
  ASSERT_FALSE(spec);
  EXPECT_EQ(spec.error().code(), Code::kInvalidArgument);
}

// ---- webhooks ----

// A throwaway PKI for the HTTPS webhook test.
sh::EvpPkeyPtr NewKey() { return Must(sh::GenerateKeyPair(sh::KeyType::kEcP256), "GenerateKeyPair"); }

sh::X509Ptr SignCert(const std::string& cn, EVP_PKEY* key, X509* issuer, EVP_PKEY* issuer_key, bool is_ca,
                     const std::string& san) {
  sh::X509NamePtr name(X509_NAME_new());
  sh::X509Ptr cert(X509_new());
  sh::BignumPtr serial(BN_new());
  time_t now = std::time(nullptr);
  bool ok = name && cert && serial &&
            X509_NAME_add_entry_by_txt(name.get(), "CN", MBSTRING_UTF8,
                                       reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0) == 1 &&
            X509_set_version(cert.get(), X509_VERSION_3) == 1 &&
            BN_rand(serial.get(), 63, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) == 1 &&
            BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(cert.get())) != nullptr &&
            X509_set_subject_name(cert.get(), name.get()) == 1 &&
            X509_set_issuer_name(cert.get(), issuer != nullptr ? X509_get_subject_name(issuer) : name.get()) == 1 &&
            X509_set_pubkey(cert.get(), key) == 1 &&
            X509_time_adj_ex(X509_getm_notBefore(cert.get()), 0, -3600, &now) != nullptr &&
            X509_time_adj_ex(X509_getm_notAfter(cert.get()), 1, 0, &now) != nullptr;
  if (!ok) throw std::runtime_error("X509 fields: " + sh::DrainOpenSslErrors());
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer != nullptr ? issuer : cert.get(), cert.get(), nullptr, nullptr, 0);
  std::vector<std::pair<int, std::string>> exts = {
      {NID_basic_constraints, is_ca ? "critical,CA:TRUE" : "critical,CA:FALSE"},
      {NID_key_usage, is_ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature"},
      {NID_subject_key_identifier, "hash"},
      {NID_authority_key_identifier, "keyid:always"}};
  if (!san.empty()) exts.emplace_back(NID_subject_alt_name, san);
  for (const auto& [nid, value] : exts) {
    sh::X509ExtPtr ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str()));
    if (!ext || X509_add_ext(cert.get(), ext.get(), -1) != 1) throw std::runtime_error("extension " + value);
  }
  if (X509_sign(cert.get(), issuer_key, EVP_sha256()) == 0) throw std::runtime_error("X509_sign");
  return cert;
}

// Records what the webhook receiver saw.
struct Seen {
  std::string method, path, body, content_type, event, timestamp, signature;
};

// An HTTP or HTTPS server on 127.0.0.1:<ephemeral>. Register handlers on http(), then Start().
class LoopbackServer {
 public:
  explicit LoopbackServer(std::unique_ptr<httplib::Server> server) : server_(std::move(server)) {}
  ~LoopbackServer() {
    if (thread_.joinable()) {
      server_->stop();
      thread_.join();
    }
  }
  LoopbackServer(const LoopbackServer&) = delete;
  LoopbackServer& operator=(const LoopbackServer&) = delete;
  httplib::Server& http() { return *server_; }
  void Start() {
    port_ = server_->bind_to_any_port("127.0.0.1");
    if (port_ <= 0) throw std::runtime_error("bind_to_any_port failed");
    thread_ = std::thread([this] { server_->listen_after_bind(); });
    auto deadline = SteadyClock::now() + seconds(10);
    while (!server_->is_running()) {
      if (SteadyClock::now() > deadline) throw std::runtime_error("server did not start");
      std::this_thread::yield();
    }
  }
  int port() const { return port_; }

 private:
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
};

class HookWebhookTest : public ::testing::Test {
 protected:
  void SetUp() override {
    secret_file_ = dir_ / "secret";
    WriteFile(secret_file_, std::string(kSecret) + "\n", 0600);
  }
  void TearDown() override { Release(); }

  LoopbackServer& Http() {
    server_ = std::make_unique<LoopbackServer>(std::make_unique<httplib::Server>());
    return *server_;
  }
  HookSpec Webhook(const std::string& path, milliseconds timeout = milliseconds(5000)) {
    HookConfig c;
    c.url = "http://127.0.0.1:" + std::to_string(server_->port()) + path;
    c.secret_file = secret_file_;
    c.allow_insecure_loopback = true;
    c.timeout = timeout;
    return Must(ParseHookSpec(c), "ParseHookSpec");
  }
  httplib::Server::Handler Record(int status, std::string body, std::string type = "application/json") {
    return [this, status, body, type](const httplib::Request& req, httplib::Response& res) {
      {
        std::lock_guard lock(mu_);
        seen_.push_back({req.method, req.path, req.body, req.get_header_value("Content-Type"),
                         req.get_header_value("X-Certfleet-Event"), req.get_header_value("X-Certfleet-Timestamp"),
                         req.get_header_value("X-Certfleet-Signature")});
      }
      res.status = status;
      res.set_content(body, type.c_str());
    };
  }
  std::vector<Seen> seen() {
    std::lock_guard lock(mu_);
    return seen_;
  }
  // A handler that holds the request until the test ends.
  httplib::Server::Handler Stall() {
    return [this](const httplib::Request&, httplib::Response& res) {
      std::unique_lock lock(mu_);
      cv_.wait_for(lock, seconds(20), [this] { return released_; });
      res.set_content("{}", "application/json");
    };
  }
  void Release() {
    {
      std::lock_guard lock(mu_);
      released_ = true;
    }
    cv_.notify_all();
  }

  TempDir dir_;
  std::string secret_file_;
  sh::FakeClock clock_{kStart};
  sh::CaptureLogger log_;
  HookRunner runner_{log_, clock_};
  std::mutex mu_;
  std::condition_variable cv_;
  bool released_ = false;
  std::vector<Seen> seen_;
  std::unique_ptr<LoopbackServer> server_;  // last: stopped before what its handlers use
};

TEST_F(HookWebhookTest, SignedPostIsAnsweredAndVerifiable) {
  Http().http().Post("/hook", Record(200, R"({"allowProvisioning": true, "parameterOverrides": {"Site": "B"}})"));
  server_->Start();
  Json input = PreProvisionInput("SN-7");
  HookRunInfo info;
  auto out = runner_.Run(Webhook("/hook"), kHookEventPreProvision, input, &info);
  ASSERT_TRUE(out) << out.error().ToString();
  EXPECT_EQ(info.http_status, 200);
  auto decision = DecidePreProvision(out);
  EXPECT_TRUE(decision.allow) << decision.reason;
  EXPECT_EQ(decision.parameter_overrides.at("Site"), "B");

  auto all = seen();
  ASSERT_EQ(all.size(), 1u);
  const Seen& s = all[0];
  EXPECT_EQ(s.method, "POST");
  EXPECT_EQ(s.content_type, "application/json");
  EXPECT_EQ(s.event, "pre-provision");
  EXPECT_EQ(Json::parse(s.body), input);
  EXPECT_EQ(s.timestamp, "1767225600") << "the injected clock's wall time";

  // Recompute the HMAC independently of the code under test.
  std::string message = s.timestamp + "." + s.body;
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int mac_len = 0;
  ASSERT_NE(HMAC(EVP_sha256(), kSecret, static_cast<int>(std::strlen(kSecret)),
                 reinterpret_cast<const unsigned char*>(message.data()), message.size(), mac, &mac_len),
            nullptr);
  std::string hex;
  for (unsigned int i = 0; i < mac_len; ++i) {
    char b[3];
    std::snprintf(b, sizeof b, "%02x", mac[i]);
    hex += b;
  }
  EXPECT_EQ(s.signature, "sha256=" + hex);

  EXPECT_TRUE(VerifyHookSignature(kSecret, s.timestamp, s.signature, s.body, clock_.Now()).ok());
  EXPECT_TRUE(VerifyHookSignature(kSecret, s.timestamp, s.signature, s.body, clock_.Now() + seconds(299)).ok());
  EXPECT_EQ(VerifyHookSignature(kSecret, s.timestamp, s.signature, s.body, clock_.Now() + seconds(301)).code(),
            Code::kUnauthenticated)
      << "replayed later than the window";
  EXPECT_EQ(VerifyHookSignature(kSecret, s.timestamp, s.signature, s.body + " ", clock_.Now()).code(),
            Code::kUnauthenticated)
      << "tampered body";
  EXPECT_EQ(VerifyHookSignature(kSecret, "1767225601", s.signature, s.body, clock_.Now()).code(),
            Code::kUnauthenticated)
      << "tampered timestamp";
  EXPECT_EQ(VerifyHookSignature("another-secret-of-some-length", s.timestamp, s.signature, s.body, clock_.Now()).code(),
            Code::kUnauthenticated);
  EXPECT_EQ(VerifyHookSignature(kSecret, "-5", s.signature, s.body, clock_.Now()).code(), Code::kUnauthenticated);
  EXPECT_EQ(VerifyHookSignature(kSecret, s.timestamp, "sha1=00", s.body, clock_.Now()).code(), Code::kUnauthenticated);
  EXPECT_EQ(log_.Contains(kSecret), false) << "the secret is never logged";
}

TEST_F(HookWebhookTest, ServerErrorIsAnError) {
  Http().http().Post("/hook", Record(500, R"({"allowProvisioning": true})"));
  server_->Start();
  HookRunInfo info;
  auto out = runner_.Run(Webhook("/hook"), kHookEventPreProvision, PreProvisionInput("S"), &info);
  ASSERT_FALSE(out);
  EXPECT_EQ(out.error().code(), Code::kUnavailable) << out.error().ToString();
  EXPECT_EQ(info.http_status, 500);
  EXPECT_FALSE(DecidePreProvision(out).allow);
}

TEST_F(HookWebhookTest, ForbiddenIsPermissionDenied) {
  Http().http().Post("/hook", Record(403, "{}"));
  server_->Start();
  auto out = runner_.Run(Webhook("/hook"), kHookEventPreProvision, PreProvisionInput("S"));
  ASSERT_FALSE(out);
  EXPECT_EQ(out.error().code(), Code::kPermissionDenied);
}

TEST_F(HookWebhookTest, NonJsonAnswerIsAnError) {
  Http().http().Post("/hook", Record(200, "<html>ok</html>", "text/html"));
  server_->http().Post("/array", Record(200, "[1, 2]"));
  server_->http().Post("/empty", Record(200, ""));
  server_->Start();
  for (const std::string path : {"/hook", "/array", "/empty"}) {
    SCOPED_TRACE(path);
    auto out = runner_.Run(Webhook(path), kHookEventPreProvision, PreProvisionInput("S"));
    ASSERT_FALSE(out);
    EXPECT_EQ(out.error().code(), Code::kInvalidArgument) << out.error().ToString();
    EXPECT_FALSE(DecidePreProvision(out).allow);
  }
}

TEST_F(HookWebhookTest, SlowServerTimesOut) {
  Http().http().Post("/hook", Stall());
  server_->Start();
  auto start = SteadyClock::now();
  auto out = runner_.Run(Webhook("/hook", milliseconds(200)), kHookEventPreProvision, PreProvisionInput("S"));
  auto elapsed = SteadyClock::now() - start;
  ASSERT_FALSE(out);
  EXPECT_EQ(out.error().code(), Code::kDeadlineExceeded) << out.error().ToString();
  EXPECT_LT(elapsed, seconds(2));
  EXPECT_FALSE(DecidePreProvision(out).allow);
}

TEST_F(HookWebhookTest, RedirectIsNotFollowed) {
  Http().http().Post("/hook", [](const httplib::Request&, httplib::Response& res) {
    res.status = 307;
    res.set_header("Location", "/elsewhere");
  });
  server_->http().Post("/elsewhere", Record(200, R"({"allowProvisioning": true})"));
  server_->Start();
  auto out = runner_.Run(Webhook("/hook"), kHookEventPreProvision, PreProvisionInput("S"));
  ASSERT_FALSE(out);
  EXPECT_EQ(out.error().code(), Code::kFailedPrecondition) << out.error().ToString();
  EXPECT_TRUE(seen().empty()) << "the redirect target was never asked";
  EXPECT_FALSE(DecidePreProvision(out).allow);
}

TEST_F(HookWebhookTest, OversizedAnswerIsAnError) {
  Http().http().Post("/hook", Record(200, "{\"pad\": \"" + std::string(100000, 'x') + "\"}"));
  server_->Start();
  auto out = runner_.Run(Webhook("/hook"), kHookEventPreProvision, PreProvisionInput("S"));
  ASSERT_FALSE(out);
  EXPECT_EQ(out.error().code(), Code::kResourceExhausted) << out.error().ToString();
}

TEST_F(HookWebhookTest, NothingListeningIsUnavailable) {
  Http().http().Post("/hook", Record(200, "{}"));
  server_->Start();
  HookSpec spec = Webhook("/hook");
  server_.reset();  // the port closes
  auto out = runner_.Run(spec, kHookEventPostEnroll, Json::object());
  ASSERT_FALSE(out);
  EXPECT_EQ(out.error().code(), Code::kUnavailable) << out.error().ToString();
}

TEST_F(HookWebhookTest, SpecWithoutSecretIsRefused) {
  HookSpec spec;
  spec.kind = HookSpec::kWebhook;
  spec.url = "https://127.0.0.1:1/hook";
  auto out = runner_.Run(spec, kHookEventPreProvision, Json::object());
  ASSERT_FALSE(out);
  EXPECT_EQ(out.error().code(), Code::kFailedPrecondition);
}

TEST_F(HookWebhookTest, HttpsVerifiesTheServerAgainstTheTrustAnchor) {
  auto ca_key = NewKey();
  auto ca = SignCert("certfleet hooks test CA", ca_key.get(), nullptr, ca_key.get(), true, "");
  auto leaf_key = NewKey();
  auto leaf = SignCert("127.0.0.1", leaf_key.get(), ca.get(), ca_key.get(), false, "IP:127.0.0.1");
  auto other_key = NewKey();
  auto other_ca = SignCert("unrelated CA", other_key.get(), nullptr, other_key.get(), true, "");
  std::string anchor = dir_ / "anchor.pem", wrong_anchor = dir_ / "wrong.pem";
  WriteFile(anchor, sh::CertToPem(ca.get()), 0644);
  WriteFile(wrong_anchor, sh::CertToPem(other_ca.get()), 0644);

  server_ = std::make_unique<LoopbackServer>(std::make_unique<httplib::SSLServer>([&](SSL_CTX& ctx) {
    return SSL_CTX_use_certificate(&ctx, leaf.get()) == 1 && SSL_CTX_use_PrivateKey(&ctx, leaf_key.get()) == 1;
  }));
  server_->http().Post("/hook", Record(200, R"({"allowProvisioning": true})"));
  server_->Start();

  HookConfig c;
  c.url = "https://127.0.0.1:" + std::to_string(server_->port()) + "/hook";
  c.secret_file = secret_file_;
  c.trust_anchor_file = anchor;
  auto out = runner_.Run(Must(ParseHookSpec(c), "spec"), kHookEventPreProvision, PreProvisionInput("S"));
  ASSERT_TRUE(out) << out.error().ToString();
  EXPECT_TRUE(DecidePreProvision(out).allow);

  c.trust_anchor_file = wrong_anchor;
  out = runner_.Run(Must(ParseHookSpec(c), "spec"), kHookEventPreProvision, PreProvisionInput("S"));
  ASSERT_FALSE(out);
  EXPECT_EQ(out.error().code(), Code::kUnauthenticated) << out.error().ToString();

  c.trust_anchor_file.clear();  // the system CAs do not know the test CA
  out = runner_.Run(Must(ParseHookSpec(c), "spec"), kHookEventPreProvision, PreProvisionInput("S"));
  ASSERT_FALSE(out);
  EXPECT_EQ(out.error().code(), Code::kUnauthenticated) << out.error().ToString();
  EXPECT_EQ(seen().size(), 1u) << "no request body reached the server without verification";
}

// ---- DecidePreProvision ----

TEST(PreProvisionHookTest, EveryFailureClassDenies) {
  struct Case {
    std::string name;
    sh::Result<Json> output;
  };
  std::vector<Case> cases;
  cases.push_back({"timeout", sh::Error(Code::kDeadlineExceeded, "hook timed out")});
  cases.push_back({"failure", sh::Error(Code::kInternal, "hook exited with status 1")});
  cases.push_back({"garbage", sh::Error(Code::kInvalidArgument, "not JSON")});
  cases.push_back({"too large", sh::Error(Code::kResourceExhausted, "too large")});
  cases.push_back({"not an object", Json::array({true})});
  cases.push_back({"empty object", Json::object()});
  cases.push_back({"string bool", Json{{"allowProvisioning", "true"}}});
  cases.push_back({"number bool", Json{{"allowProvisioning", 1}}});
  cases.push_back({"null bool", Json{{"allowProvisioning", nullptr}}});
  cases.push_back({"denied", Json{{"allowProvisioning", false}, {"parameterOverrides", {{"a", "b"}}}}});
  cases.push_back({"overrides not object", Json{{"allowProvisioning", true}, {"parameterOverrides", "x"}}});
  cases.push_back({"override number", Json{{"allowProvisioning", true}, {"parameterOverrides", {{"a", 1}}}}});
  cases.push_back({"override null", Json{{"allowProvisioning", true}, {"parameterOverrides", {{"a", nullptr}}}}});
  cases.push_back(
      {"override object", Json{{"allowProvisioning", true}, {"parameterOverrides", {{"a", {{"b", "c"}}}}}}});
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    auto d = DecidePreProvision(c.output);
    EXPECT_FALSE(d.allow);
    EXPECT_TRUE(d.parameter_overrides.empty());
    EXPECT_FALSE(d.reason.empty());
  }
}

TEST(PreProvisionHookTest, AllowWithAndWithoutOverrides) {
  auto d = DecidePreProvision(Json{{"allowProvisioning", true}});
  EXPECT_TRUE(d.allow);
  EXPECT_TRUE(d.parameter_overrides.empty());
  d = DecidePreProvision(
      Json{{"allowProvisioning", true}, {"parameterOverrides", {{"Site", "B"}, {"Ring", "2"}}}, {"extra", 1}});
  EXPECT_TRUE(d.allow);
  EXPECT_EQ(d.parameter_overrides, (std::map<std::string, std::string>{{"Ring", "2"}, {"Site", "B"}}));
}

TEST(PreProvisionHookTest, InputFollowsTheAwsContract) {
  Json j = PreProvisionInput("SN-1");
  for (const char* key : {"claimCertificateId", "certificateId", "certificatePem", "templateArn", "clientId"}) {
    EXPECT_TRUE(j.contains(key) && j[key].is_string()) << key;
  }
  EXPECT_EQ(j["parameters"], (Json{{"SerialNumber", "SN-1"}, {"Model", "gw-7"}}));
  PreProvisionHookInput empty;
  EXPECT_TRUE(BuildPreProvisionHookInput(empty)["parameters"].is_object());
}

TEST(PreProvisionHookTest, ReportPostHookLogsFailuresAsErrors) {
  sh::CaptureLogger log;
  ReportPostHook(log, kHookEventPostReenroll, sh::Result<Json>(Json::object()));
  ReportPostHook(log, kHookEventPostReenroll, sh::Error(Code::kUnavailable, "webhook down"));
  auto records = log.records();
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0].level, sh::LogLevel::kDebug);
  EXPECT_EQ(records[1].level, sh::LogLevel::kError);
  EXPECT_NE(records[1].line.find("webhook down"), std::string::npos);
}

// ---- DecideAllow and the enrollment inputs ----

TEST(AllowHookTest, EveryFailureClassAndMalformedAnswerDenies) {
  struct Case {
    std::string name;
    sh::Result<Json> output;
  };
  std::vector<Case> cases;
  cases.push_back({"timeout", sh::Error(Code::kDeadlineExceeded, "hook timed out")});
  cases.push_back({"non-zero exit", sh::Error(Code::kInternal, "hook exited with status 1")});
  cases.push_back({"garbage", sh::Error(Code::kInvalidArgument, "not JSON")});
  cases.push_back({"unavailable", sh::Error(Code::kUnavailable, "connection refused")});
  cases.push_back({"array", Json::array({Json{{"allow", true}}})});
  cases.push_back({"string", Json("allow")});
  cases.push_back({"true", Json(true)});
  cases.push_back({"null", Json(nullptr)});
  cases.push_back({"empty object", Json::object()});
  cases.push_back({"string allow", Json{{"allow", "true"}}});
  cases.push_back({"number allow", Json{{"allow", 1}}});
  cases.push_back({"null allow", Json{{"allow", nullptr}}});
  cases.push_back({"object allow", Json{{"allow", {{"value", true}}}}});
  cases.push_back({"array allow", Json{{"allow", Json::array({true})}}});
  cases.push_back({"wrong key case", Json{{"Allow", true}}});
  cases.push_back({"provisioning key", Json{{"allowProvisioning", true}}});
  cases.push_back({"non-string reason", Json{{"allow", true}, {"reason", 7}}});
  cases.push_back({"explicit deny", Json{{"allow", false}}});
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    HookDecision d = DecideAllow(c.output);
    EXPECT_FALSE(d.allow);
    EXPECT_FALSE(d.reason.empty());
  }
  EXPECT_NE(DecideAllow(sh::Error(Code::kDeadlineExceeded, "hook timed out")).reason.find("timed out"), std::string::npos);
}

TEST(AllowHookTest, AllowAndTheHooksReason) {
  HookDecision d = DecideAllow(Json{{"allow", true}});
  EXPECT_TRUE(d.allow);
  d = DecideAllow(Json{{"allow", true}, {"reason", "known device"}, {"extra", {1, 2}}});
  EXPECT_TRUE(d.allow);
  EXPECT_NE(d.reason.find("known device"), std::string::npos);
  d = DecideAllow(Json{{"allow", false}, {"reason", "serial blocked"}});
  EXPECT_FALSE(d.allow);
  EXPECT_NE(d.reason.find("serial blocked"), std::string::npos);
  // A long reason is cut, never in the middle of a UTF-8 sequence.
  std::string euro_wall;
  for (int i = 0; i < 200; ++i) euro_wall += "\xe2\x82\xac";
  d = DecideAllow(Json{{"allow", false}, {"reason", euro_wall}});
  EXPECT_FALSE(d.allow);
  EXPECT_LT(d.reason.size(), 300u);
  EXPECT_NO_THROW((void)Json(d.reason).dump()) << "still valid UTF-8";
}

TEST(AllowHookTest, EnrollInputsFollowTheDocumentedContract) {
  EnrollHookInput in;
  in.event = std::string(kHookEventPreEnroll);
  in.method = std::string(kEnrollMethodToken);
  in.thing_name = "gw-1";
  in.csr_subject = "CN=gw-1";
  in.csr_public_key_type = "ec-p256";
  in.remote_address = "192.0.2.1:4000";
  Json j = BuildEnrollHookInput(in);
  EXPECT_EQ(j, (Json{{"event", "pre-enroll"}, {"method", "token"}, {"thingName", "gw-1"}, {"csrSubject", "CN=gw-1"},
                     {"csrPublicKeyType", "ec-p256"}, {"remoteAddress", "192.0.2.1:4000"},
                     {"labels", Json::array()}}));
  in.client_certificate_id = std::string(64, 'c');
  in.labels = {"fleet-a"};
  j = BuildEnrollHookInput(in);
  EXPECT_EQ(j["clientCertificateId"], std::string(64, 'c'));
  EXPECT_EQ(j["labels"], Json::array({"fleet-a"}));

  IssuedHookInput post;
  post.event = std::string(kHookEventPostReenroll);
  post.method = std::string(kEnrollMethodReenroll);
  post.thing_name = "gw-1";
  post.certificate_id = std::string(64, 'a');
  post.serial = "0A1B";
  post.not_after = kStart;
  Json p = BuildIssuedHookInput(post);
  EXPECT_EQ(p, (Json{{"event", "post-reenroll"}, {"method", "reenroll"}, {"thingName", "gw-1"},
                     {"certificateId", std::string(64, 'a')}, {"serial", "0A1B"},
                     {"notAfter", "2026-01-01T00:00:00Z"}}));
  post.previous_certificate_id = std::string(64, 'b');
  EXPECT_EQ(BuildIssuedHookInput(post)["previousCertificateId"], std::string(64, 'b'));
}

// ---- the packaged example hook ----

class AllowListHookTest : public HookExecTest {
 protected:
  void SetUp() override {
    if (access("/usr/bin/python3", X_OK) != 0) GTEST_SKIP() << "no /usr/bin/python3";
    std::filesystem::path source =
        std::filesystem::path(__FILE__).parent_path().parent_path() / "packaging" / "hooks" / "allow-list-hook";
    std::string text = ReadFile(source.string());
    ASSERT_FALSE(text.empty()) << "cannot read " << source;
    hook_ = dir_ / "allow-list-hook";
    WriteFile(hook_, text, 0755);
    serials_ = dir_ / "serials";
    WriteFile(serials_, "# gateways allowed to provision\nGW-0001\n  GW-0002  # spare, rack 4\n\nGW-0003\n", 0644);
  }
  PreProvisionDecision Decide(const Json& input, const std::string& serials_file) {
    return DecidePreProvision(runner_.Run(Exec({hook_, serials_file}), kHookEventPreProvision, input));
  }
  std::string hook_, serials_;
};

TEST_F(AllowListHookTest, AllowsListedSerialsOnly) {
  EXPECT_TRUE(Decide(PreProvisionInput("GW-0001"), serials_).allow);
  EXPECT_TRUE(Decide(PreProvisionInput("GW-0002"), serials_).allow) << "whitespace and comment stripped";
  EXPECT_TRUE(Decide(PreProvisionInput("GW-0003"), serials_).allow);
  EXPECT_FALSE(Decide(PreProvisionInput("GW-0004"), serials_).allow);
  EXPECT_FALSE(Decide(PreProvisionInput("gw-0001"), serials_).allow) << "case-sensitive";
  EXPECT_FALSE(Decide(PreProvisionInput("# gateways allowed to provision"), serials_).allow);
  EXPECT_FALSE(Decide(PreProvisionInput(""), serials_).allow);
}

TEST_F(AllowListHookTest, MissingSerialOrListDenies) {
  Json no_params = PreProvisionInput("GW-0001");
  no_params.erase("parameters");
  EXPECT_FALSE(Decide(no_params, serials_).allow);
  Json numeric = PreProvisionInput("GW-0001");
  numeric["parameters"]["SerialNumber"] = 1;
  EXPECT_FALSE(Decide(numeric, serials_).allow);

  HookRunInfo info;
  auto out = runner_.Run(Exec({hook_, dir_ / "no-such-list"}), kHookEventPreProvision, PreProvisionInput("GW-0001"),
                         &info);
  ASSERT_FALSE(out);
  EXPECT_EQ(info.exit_code, 2);
  auto d = DecidePreProvision(out);
  EXPECT_FALSE(d.allow);
  EXPECT_NE(d.reason.find("status 2"), std::string::npos) << d.reason;
}

}  // namespace
}  // namespace certfleet::companion

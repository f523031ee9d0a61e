#include "hal/pkcs11_uri.h"

#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "shared/testing/temp_dir.h"

namespace certfleet::hal {
namespace {

using shared::Code;

TEST(Pkcs11Uri, ParsesTokenObjectAndQuery) {
  auto u = ParsePkcs11Uri(
      "pkcs11:token=gw%20token;object=claim;id=%01%02;manufacturer=SoftHSM?module-path=/usr/lib/softhsm/"
      "libsofthsm2.so&pin-source=file:/etc/certfleet/pin");
  ASSERT_TRUE(u.has_value()) << u.error().ToString();
  EXPECT_EQ(u->token, "gw token");
  EXPECT_EQ(u->object, "claim");
  EXPECT_EQ(u->id, std::string("\x01\x02"));
  EXPECT_EQ(u->module_path, "/usr/lib/softhsm/libsofthsm2.so");
  EXPECT_EQ(u->pin_source, "/etc/certfleet/pin");
  EXPECT_TRUE(u->pin_value.empty());
}

TEST(Pkcs11Uri, PinValueAndBarePinPath) {
  auto u = ParsePkcs11Uri("pkcs11:token=a?pin-value=12%2634&pin-source=/run/pin");
  ASSERT_TRUE(u.has_value()) << u.error().ToString();
  EXPECT_EQ(u->pin_value, "12&34");
  EXPECT_EQ(u->pin_source, "/run/pin");
  EXPECT_TRUE(ParsePkcs11Uri("pkcs11:").has_value());
}

TEST(Pkcs11Uri, RejectsMalformedInput) {
  for (const char* bad : {
           "", "pkcs12:token=a", "PKCS11:token=a", "token=a", "pkcs11:token", "pkcs11:=a", "pkcs11:token=a;token=b",
           "pkcs11:token=%4", "pkcs11:token=%zz", "pkcs11:token=%", "pkcs11:token=a b", "pkcs11:token=\x01",
           "pkcs11:token=\xc3\xa9", "pkcs11:colour=red", "pkcs11:token=a?", "pkcs11:token=a?module-path=relative.so",
           "pkcs11:token=a?module-path=", "pkcs11:token=a?pin-source=file:relative", "pkcs11:token=a?foo=bar",
           "pkcs11:token=a?pin-value=1&pin-value=2", "pkcs11:token=a?module-path=/a.so&&pin-value=1",
           "pkcs11:token=a%00b", "pkcs11:token=a?module-path=/x%00.so",
       }) {
    auto u = ParsePkcs11Uri(bad);
    EXPECT_FALSE(u.has_value()) << "accepted: " << bad;
    if (!u) {
      EXPECT_EQ(u.error().code(), Code::kInvalidArgument) << bad;
    }
  }
  EXPECT_FALSE(ParsePkcs11Uri("pkcs11:token=" + std::string(5000, 'a')).has_value());
}

TEST(Pkcs11Uri, EscapeRoundTrips) {
  std::string odd = "gw token;?&=%/\x01\xff";
  auto u = ParsePkcs11Uri("pkcs11:token=" + Pkcs11Escape(odd));
  ASSERT_TRUE(u.has_value()) << u.error().ToString();
  EXPECT_EQ(u->token, odd);
}

TEST(PinFile, ParsesOneLine) {
  EXPECT_EQ(*ParsePinFileContents("1234"), "1234");
  EXPECT_EQ(*ParsePinFileContents("1234\n"), "1234");
  EXPECT_EQ(*ParsePinFileContents("12 34\r\n"), "12 34");
  for (std::string bad : {std::string(""), std::string("\n"), std::string("12\n34"), std::string("1234\n\n"),
                          std::string("12\x00" "34", 5), std::string("\t1234"), std::string(300, '1')}) {
    auto pin = ParsePinFileContents(bad);
    EXPECT_FALSE(pin.has_value()) << "accepted: " << bad;
    if (!pin) {
      EXPECT_EQ(pin.error().code(), Code::kInvalidArgument);
    }
  }
}

TEST(PinFile, StrictModeChecks) {
  shared::TempDir tmp;
  ASSERT_FALSE(tmp.path().empty());
  std::string path = tmp.path() + "/pin";
  std::ofstream(path) << "5678\n";
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  auto pin = ReadPinFile(path);
  ASSERT_TRUE(pin.has_value()) << pin.error().ToString();
  EXPECT_EQ(*pin, "5678");
  ASSERT_EQ(::chmod(path.c_str(), 0400), 0);
  EXPECT_TRUE(ReadPinFile(path).has_value());

  for (mode_t wide : {0640, 0604, 0620, 0602}) {
    ASSERT_EQ(::chmod(path.c_str(), wide), 0);
    auto r = ReadPinFile(path);
    ASSERT_FALSE(r.has_value()) << std::oct << wide;
    EXPECT_EQ(r.error().code(), Code::kPermissionDenied);
    EXPECT_EQ(r.error().ToString().find("5678"), std::string::npos);
  }
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);

  EXPECT_EQ(ReadPinFile(tmp.path() + "/missing").error().code(), Code::kNotFound);
  std::string link = tmp.path() + "/link";
  ASSERT_EQ(::symlink(path.c_str(), link.c_str()), 0);
  EXPECT_EQ(ReadPinFile(link).error().code(), Code::kPermissionDenied);
  EXPECT_EQ(ReadPinFile(tmp.path()).error().code(), Code::kPermissionDenied);

  std::string empty = tmp.path() + "/empty";
  std::ofstream(empty) << "";
  ASSERT_EQ(::chmod(empty.c_str(), 0600), 0);
  EXPECT_EQ(ReadPinFile(empty).error().code(), Code::kInvalidArgument);

  if (::geteuid() == 0) {
    // Owned by someone else: refused even though root could read it.
    ASSERT_EQ(::chown(path.c_str(), 65534, 65534), 0);
    EXPECT_EQ(ReadPinFile(path).error().code(), Code::kPermissionDenied);
  }
}

}  // namespace
}  // namespace certfleet::hal

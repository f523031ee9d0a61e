#include "companion/rotation_coordinator.h"

#include <openssl/pem.h>
#include <openssl/x509.h>

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "companion/testing/test_companion.h"
#include "shared/wire/rotation.h"
#include "shared/x509/cert.h"
#include "shared/x509/key.h"

namespace certfleet::companion {
namespace {

namespace sh = shared;
using shared::Code;
using std::chrono::hours;
using std::chrono::seconds;

// Records what the coordinator publishes; fails while `down` is set.
class FakePublisher final : public RotationPublisher {
 public:
  struct Message {
    std::string topic;
    std::string payload;
    bool retain;
  };
  Status Publish(const std::string& topic, std::string_view payload, bool retain) override {
    if (down) return Status(Code::kUnavailable, "broker away");
    messages.push_back({topic, std::string(payload), retain});
    return Status::Ok();
  }
  std::vector<Message> messages;
  bool down = false;
};

// A thing's identity: key and certificate, recorded in the registry.
struct Identity {
  sh::EvpPkeyPtr key;
  sh::X509Ptr cert;
  std::string id;
};

class RotationCoordinatorTest : public TestCompanion {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(InitState());
    options_.grace = hours(24);
    options_.revoke_after = hours(1);
    options_.crl_file = dir_.path() + "/crl.pem";
    coordinator_ = std::make_unique<RotationCoordinator>(*state_, options_, publisher_, fs_, clock_, log_, [this] {
      ++reloads_;
      return reload_status_;
    });
    old_ = Issue("gw-1", std::nullopt);
    new_ = Issue("gw-1", old_.id);
  }

  // Issues a certificate for `thing` (re-enrolling `replaces` if set) and records it.
  Identity Issue(const std::string& thing, std::optional<std::string> replaces) {
    Identity out;
    auto key = sh::GenerateKeyPair(sh::KeyType::kEcP256);
    EXPECT_TRUE(key);
    out.key = std::move(*key);
    CertTemplate tmpl;
    tmpl.subject = NameFromCommonName(thing).value();
    tmpl.public_key = out.key.get();
    tmpl.validity = hours(24 * 90);
    auto cert = state_->issuer->Issue(tmpl, clock_.Now());
    EXPECT_TRUE(cert) << cert.error().ToString();
    out.cert = std::move(*cert);
    sh::CertInfo info = sh::DescribeCert(out.cert.get());
    out.id = info.id;
    IssueRecord rec;
    rec.cert = CertRecord{info.id, thing, info.serial, info.subject, info.not_before, info.not_after, clock_.Now(),
                          CertStatus::kActive, "test", std::nullopt, std::nullopt, sh::CertToPem(out.cert.get()),
                          clock_.Now(), std::nullopt, std::nullopt};
    rec.replaces_cert_id = replaces;
    Status st = state_->registry->RecordIssued(rec, clock_.Now());
    EXPECT_TRUE(st.ok()) << st.ToString();
    clock_.Advance(seconds(1));
    return out;
  }

  std::string CreateRotation(const std::string& thing) {
    std::string id = NewRotationId().value();
    RotationRecord r;
    r.id = id;
    r.thing_name = thing;
    r.reason = "operator";
    r.created_at = clock_.Now();
    r.deadline = clock_.Now() + hours(24 * 7);
    r.created_by = "operator:test";
    Status st = state_->registry->CreateRotation(r);
    EXPECT_TRUE(st.ok()) << st.ToString();
    return id;
  }

  // A signed ack, as the agent builds it.
  sh::RotationAck Ack(const std::string& rotation_id, const Identity& signer, const std::string& cert_id,
                      const std::string& previous) {
    sh::RotationAck a;
    a.thing_name = "gw-1";
    a.rotation_id = rotation_id;
    a.certificate_id = cert_id;
    a.previous_certificate_id = previous;
    a.signed_at = clock_.Now();
    a.signature = sh::SignSha256(signer.key.get(), sh::RotationAckSignedText(a)).value();
    return a;
  }
  sh::MqttMessage AckMessage(const sh::RotationAck& a, const std::string& thing = "gw-1") {
    return {"certfleet/things/" + thing + "/rotation/ack", sh::EncodeRotationAck(a).value(), false};
  }
  // The ack must be rejected with `why` in the reason, recorded as a security event.
  void ExpectRejected(const sh::MqttMessage& m, const std::string& why) {
    size_t published = publisher_.messages.size();
    AckOutcome out = coordinator_->HandleAck(m);
    EXPECT_FALSE(out.accepted);
    EXPECT_NE(out.reason.find(why), std::string::npos) << out.reason;
    auto events = state_->registry->ListSecurityEvents(1);
    ASSERT_TRUE(events && !events->empty());
    EXPECT_EQ((*events)[0].kind, "rotation_ack_rejected");
    EXPECT_EQ(publisher_.messages.size(), published) << "a rejected ack publishes nothing";
    auto cert = state_->registry->FindCert(new_.id).value();
    EXPECT_FALSE(cert->proven_at) << "a rejected ack proves nothing";
  }
  CertStatus StatusOf(const std::string& id) { return state_->registry->FindCert(id).value()->status; }

  RotationCoordinatorOptions options_;
  FakePublisher publisher_;
  int reloads_ = 0;
  Status reload_status_;
  std::unique_ptr<RotationCoordinator> coordinator_;
  Identity old_;
  Identity new_;
};

TEST(RotationIdTest, FreshIdsAreValidAndDiffer) {
  std::string a = NewRotationId().value();
  EXPECT_TRUE(sh::ValidateRotationId(a).ok()) << a;
  EXPECT_NE(a, NewRotationId().value());
}

TEST(RotationAckFilterTest, SharedAndPlain) {
  EXPECT_EQ(RotationAckSubscription("g1"), "$share/g1/certfleet/things/+/rotation/ack");
  EXPECT_EQ(RotationAckSubscription(""), "certfleet/things/+/rotation/ack");
}

TEST_F(RotationCoordinatorTest, PublishesNewRequestsOnceRetainedAndAgainAfterReconnect) {
  std::string id = CreateRotation("gw-1");
  auto pass = coordinator_->RunOnce();
  ASSERT_TRUE(pass) << pass.error().ToString();
  EXPECT_EQ(pass->published, 1);
  ASSERT_EQ(publisher_.messages.size(), 1u);
  EXPECT_EQ(publisher_.messages[0].topic, "certfleet/things/gw-1/rotation/request");
  EXPECT_TRUE(publisher_.messages[0].retain);
  auto req = sh::DecodeRotationRequest(publisher_.messages[0].payload);
  ASSERT_TRUE(req) << req.error().ToString();
  EXPECT_EQ(req->rotation_id, id);
  EXPECT_EQ(req->reason, "operator");
  auto stored = state_->registry->FindRotation(id).value();
  EXPECT_EQ(stored->published_at, clock_.Now());

  // Published once; again (all pending ones) after a reconnect.
  EXPECT_EQ(coordinator_->RunOnce()->published, 0);
  coordinator_->RepublishAll();
  EXPECT_EQ(coordinator_->RunOnce()->published, 1);
  EXPECT_EQ(publisher_.messages.size(), 2u);
  EXPECT_TRUE(log_.Contains("rotation request published"));
}

TEST_F(RotationCoordinatorTest, BrokerAwayLeavesTheRequestUnpublishedForTheNextPass) {
  std::string id = CreateRotation("gw-1");
  publisher_.down = true;
  EXPECT_EQ(coordinator_->RunOnce()->published, 0);
  EXPECT_FALSE(state_->registry->FindRotation(id).value()->published_at);
  publisher_.down = false;
  EXPECT_EQ(coordinator_->RunOnce()->published, 1);
  EXPECT_TRUE(state_->registry->FindRotation(id).value()->published_at);
}

TEST_F(RotationCoordinatorTest, ValidAckCompletesTheRotationAndClearsTheRequest) {
  std::string id = CreateRotation("gw-1");
  ASSERT_TRUE(coordinator_->RunOnce());
  publisher_.messages.clear();
  AckOutcome out = coordinator_->HandleAck(AckMessage(Ack(id, new_, new_.id, old_.id)));
  ASSERT_TRUE(out.accepted) << out.reason;
  EXPECT_EQ(out.rotation_id, id);
  auto r = state_->registry->FindRotation(id).value();
  EXPECT_EQ(r->state, RotationState::kCompleted);
  EXPECT_EQ(r->new_cert_id, new_.id);
  EXPECT_EQ(state_->registry->FindCert(new_.id).value()->proven_at, clock_.Now());
  EXPECT_EQ(state_->registry->FindCert(old_.id).value()->retire_at, clock_.Now() + hours(24));
  ASSERT_EQ(publisher_.messages.size(), 1u);
  EXPECT_EQ(publisher_.messages[0].topic, "certfleet/things/gw-1/rotation/request");
  EXPECT_EQ(publisher_.messages[0].payload, "") << "an empty retained message clears the request";
  EXPECT_TRUE(publisher_.messages[0].retain);
}

TEST_F(RotationCoordinatorTest, AgentInitiatedAckProvesTheCertificate) {
  AckOutcome out = coordinator_->HandleAck(AckMessage(Ack("", new_, new_.id, old_.id)));
  ASSERT_TRUE(out.accepted) << out.reason;
  EXPECT_TRUE(state_->registry->FindCert(new_.id).value()->proven_at);
  EXPECT_TRUE(publisher_.messages.empty()) << "no request to clear";
}

TEST_F(RotationCoordinatorTest, ClearingRetriesWhenTheBrokerWasAway) {
  std::string id = CreateRotation("gw-1");
  ASSERT_TRUE(coordinator_->RunOnce());
  publisher_.messages.clear();
  publisher_.down = true;
  ASSERT_TRUE(coordinator_->HandleAck(AckMessage(Ack(id, new_, new_.id, old_.id))).accepted);
  EXPECT_FALSE(state_->registry->FindRotation(id).value()->cleared_at);
  publisher_.down = false;
  ASSERT_TRUE(coordinator_->RunOnce());
  ASSERT_EQ(publisher_.messages.size(), 1u);
  EXPECT_EQ(publisher_.messages[0].payload, "");
  EXPECT_TRUE(state_->registry->FindRotation(id).value()->cleared_at);
  ASSERT_TRUE(coordinator_->RunOnce());
  EXPECT_EQ(publisher_.messages.size(), 1u) << "cleared once";
}

TEST_F(RotationCoordinatorTest, CancelledRequestIsClearedFromTheBroker) {
  std::string id = CreateRotation("gw-1");
  ASSERT_TRUE(coordinator_->RunOnce());
  ASSERT_TRUE(state_->registry->CancelRotation(id).ok());  // certfleetctl rotations cancel
  ASSERT_TRUE(coordinator_->RunOnce());
  ASSERT_EQ(publisher_.messages.size(), 2u);
  EXPECT_EQ(publisher_.messages[1].topic, "certfleet/things/gw-1/rotation/request");
  EXPECT_EQ(publisher_.messages[1].payload, "");
  EXPECT_TRUE(publisher_.messages[1].retain);
}

TEST_F(RotationCoordinatorTest, ClearingDoesNotWipeANewerRequest) {
  std::string first = CreateRotation("gw-1");
  ASSERT_TRUE(coordinator_->RunOnce());
  ASSERT_TRUE(state_->registry->CancelRotation(first).ok());
  std::string second = CreateRotation("gw-1");
  ASSERT_TRUE(coordinator_->RunOnce());
  ASSERT_EQ(publisher_.messages.size(), 2u);
  EXPECT_EQ(sh::DecodeRotationRequest(publisher_.messages[1].payload).value().rotation_id, second);
  EXPECT_TRUE(state_->registry->FindRotation(first).value()->cleared_at);
}

TEST_F(RotationCoordinatorTest, RejectsABadSignature) {
  std::string id = CreateRotation("gw-1");
  ExpectRejected(AckMessage(Ack(id, old_, new_.id, old_.id)), "signature");
  sh::RotationAck tampered = Ack(id, new_, new_.id, old_.id);
  tampered.signed_at += seconds(1);
  ExpectRejected(AckMessage(tampered), "signature");
}

TEST_F(RotationCoordinatorTest, RejectsAnAckForAnotherThing) {
  std::string id = CreateRotation("gw-1");
  ExpectRejected(AckMessage(Ack(id, new_, new_.id, old_.id), "gw-2"), "differs from the topic");
}

TEST_F(RotationCoordinatorTest, RejectsAnUnknownCertificate) {
  std::string id = CreateRotation("gw-1");
  ExpectRejected(AckMessage(Ack(id, new_, sh::Sha256Hex("nope"), old_.id)), "unknown certificate");
}

TEST_F(RotationCoordinatorTest, RejectsAnotherThingsCertificate) {
  std::string id = CreateRotation("gw-1");
  Identity other = Issue("gw-2", std::nullopt);
  ExpectRejected(AckMessage(Ack(id, other, other.id, old_.id)), "another thing");
}

TEST_F(RotationCoordinatorTest, RejectsACertificateThatIsNotCurrent) {
  std::string id = CreateRotation("gw-1");
  // The old certificate (superseded), signed with its own key.
  ExpectRejected(AckMessage(Ack(id, old_, old_.id, new_.id)), "not the thing's current");
}

TEST_F(RotationCoordinatorTest, RejectsAWrongPredecessor) {
  std::string id = CreateRotation("gw-1");
  ExpectRejected(AckMessage(Ack(id, new_, new_.id, sh::Sha256Hex("nope"))), "predecessor");
}

TEST_F(RotationCoordinatorTest, RejectsAnUnknownOrCancelledRotation) {
  std::string id = CreateRotation("gw-1");
  ExpectRejected(AckMessage(Ack(NewRotationId().value(), new_, new_.id, old_.id)), "unknown rotation");
  ASSERT_TRUE(state_->registry->CancelRotation(id).ok());
  ExpectRejected(AckMessage(Ack(id, new_, new_.id, old_.id)), "CANCELLED");
}

TEST_F(RotationCoordinatorTest, ARepeatedAckOfACompletedRotationIsHarmless) {
  std::string id = CreateRotation("gw-1");
  sh::RotationAck ack = Ack(id, new_, new_.id, old_.id);
  ASSERT_TRUE(coordinator_->HandleAck(AckMessage(ack)).accepted);
  size_t published = publisher_.messages.size();
  auto events = state_->registry->ListSecurityEvents(100);
  ASSERT_TRUE(events);
  // The agent saw its retained request again (or its first ack went unanswered): the same
  // ack again changes nothing, is no security event, and the request is not cleared twice.
  AckOutcome again = coordinator_->HandleAck(AckMessage(ack));
  EXPECT_FALSE(again.accepted);
  EXPECT_TRUE(again.duplicate);
  EXPECT_EQ(publisher_.messages.size(), published);
  AckOutcome self_started = coordinator_->HandleAck(AckMessage(Ack("", new_, new_.id, old_.id)));
  EXPECT_FALSE(self_started.accepted);
  EXPECT_TRUE(self_started.duplicate);
  EXPECT_EQ(state_->registry->ListSecurityEvents(100)->size(), events->size());
}

TEST_F(RotationCoordinatorTest, RejectsMalformedPayloadsAndTopics) {
  ExpectRejected({"certfleet/things/gw-1/rotation/ack", "not json", false}, "malformed");
  ExpectRejected({"certfleet/things/gw-1/rotation/ack", "", false}, "malformed");
  ExpectRejected({"certfleet/things/gw-1/rotation/ack", std::string(sh::kMaxRotationPayload + 1, '{'), false},
                 "malformed");
  ExpectRejected({"certfleet/things/gw-1/status", "{}", false}, "not a rotation ack topic");
}

TEST_F(RotationCoordinatorTest, SweepRetiresAfterGraceThenRevokesAndRewritesTheCrl) {
  // First pass writes the CRL (empty) and reloads the broker once.
  auto first = coordinator_->RunOnce();
  ASSERT_TRUE(first);
  EXPECT_TRUE(first->crl_written);
  EXPECT_EQ(reloads_, 1);
  EXPECT_FALSE(coordinator_->RunOnce()->crl_written) << "nothing changed";

  ASSERT_TRUE(coordinator_->HandleAck(AckMessage(Ack("", new_, new_.id, old_.id))).accepted);
  clock_.Advance(hours(24) - seconds(1));
  EXPECT_TRUE(coordinator_->RunOnce()->transitions.empty());
  EXPECT_EQ(StatusOf(old_.id), CertStatus::kActive);

  clock_.Advance(seconds(1));
  auto retired = coordinator_->RunOnce();
  ASSERT_TRUE(retired);
  ASSERT_EQ(retired->transitions.size(), 1u);
  EXPECT_EQ(StatusOf(old_.id), CertStatus::kInactive);
  EXPECT_FALSE(retired->crl_written) << "INACTIVE is not in the CRL";

  clock_.Advance(hours(1));
  auto revoked = coordinator_->RunOnce();
  ASSERT_TRUE(revoked);
  ASSERT_EQ(revoked->transitions.size(), 1u);
  EXPECT_EQ(StatusOf(old_.id), CertStatus::kRevoked);
  EXPECT_EQ(StatusOf(new_.id), CertStatus::kActive);
  EXPECT_TRUE(revoked->crl_written);
  EXPECT_EQ(reloads_, 2);
  auto pem = fs_.ReadFile(options_.crl_file, 1 << 20);
  ASSERT_TRUE(pem);
  EXPECT_NE(pem->find("BEGIN X509 CRL"), std::string::npos);
  EXPECT_TRUE(log_.Contains("certificate revoked"));
}

TEST_F(RotationCoordinatorTest, UnprovenSuccessorLeavesTheOldCertificateAlone) {
  clock_.Advance(hours(24 * 365));
  auto pass = coordinator_->RunOnce();
  ASSERT_TRUE(pass);
  EXPECT_TRUE(pass->transitions.empty());
  EXPECT_EQ(StatusOf(old_.id), CertStatus::kActive);
}

TEST_F(RotationCoordinatorTest, CrlFollowsRevocationsMadeElsewhereAndRetriesAFailedReload) {
  ASSERT_TRUE(coordinator_->RunOnce());
  // certfleetctl certs revoke, in another process: only the registry changes.
  ASSERT_TRUE(state_->registry->SetCertStatus(old_.id, CertStatus::kRevoked, clock_.Now()).ok());
  reload_status_ = Status(Code::kInternal, "reload command failed");
  auto pass = coordinator_->RunOnce();
  ASSERT_TRUE(pass);
  EXPECT_TRUE(pass->crl_written);
  EXPECT_FALSE(pass->broker_reloaded);
  reload_status_ = Status::Ok();
  auto retry = coordinator_->RunOnce();
  EXPECT_FALSE(retry->crl_written);
  EXPECT_TRUE(retry->broker_reloaded);
  EXPECT_EQ(reloads_, 3);
  auto crl_pem = fs_.ReadFile(options_.crl_file, 1 << 20).value();
  sh::BioPtr bio(BIO_new_mem_buf(crl_pem.data(), static_cast<int>(crl_pem.size())));
  sh::X509CrlPtr crl(PEM_read_bio_X509_CRL(bio.get(), nullptr, nullptr, nullptr));
  ASSERT_TRUE(crl);
  X509_REVOKED* found = nullptr;
  EXPECT_EQ(X509_CRL_get0_by_serial(crl.get(), &found, X509_get0_serialNumber(old_.cert.get())), 1);
}

TEST_F(RotationCoordinatorTest, CrlIsRewrittenAtHalfItsValidity) {
  ASSERT_TRUE(coordinator_->RunOnce()->crl_written);
  clock_.Advance(options_.crl_validity / 2 - seconds(1));
  EXPECT_FALSE(coordinator_->RunOnce()->crl_written);
  clock_.Advance(seconds(1));
  EXPECT_TRUE(coordinator_->RunOnce()->crl_written);
}

}  // namespace
}  // namespace certfleet::companion

# Sidekiq's Web UI on forkq's Redis (the example of docs/SIDEKIQ.md, run by the tests).
#
#   FORKQ_REDIS_URL=redis://127.0.0.1:6379/0 FORKQ_NAMESPACE=myapp rackup -p 9292 config.ru
#
# forkq prefixes every key with "{<namespace>}:"; redis-namespace adds "<namespace>:",
# so the Sidekiq namespace is forkq's namespace in braces.
require "securerandom"
require "sidekiq"
require "sidekiq/web"
require "redis-namespace"

redis_url = ENV.fetch("FORKQ_REDIS_URL", "redis://127.0.0.1:6379/0")
namespace = "{#{ENV.fetch("FORKQ_NAMESPACE", "forkq")}}"

Sidekiq.configure_client do |config|
  config.redis = { url: redis_url, namespace: namespace, size: 2 }
end

# Sidekiq::Web needs a session for its CSRF protection (the Retry/Delete/Kill buttons).
session_key = ENV.fetch("SESSION_SECRET") { SecureRandom.hex(32) }
use Rack::Session::Cookie, secret: session_key, same_site: true, max_age: 86400

run Sidekiq::Web

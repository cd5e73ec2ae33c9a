% rebase('admin/base.tpl', title='Dashboard', section='/admin')
<h1>Dashboard</h1>
% if health["status"] != "ok" or health.get("payments", "ok") != "ok":
<p class="flash bad">Health: {{health["status"]}} · bot {{health["bot"]}} · payments {{health.get("payments", "-")}}</p>
% end
<section class="cards">
  % for label, row in stats["revenue"].items():
  <div class="card stat"><h2>{{label}}</h2><p class="big">{{fmt(row["revenue_cents"])}}</p><p>{{row["orders"]}} paid order{{'s' if row["orders"] != 1 else ''}}</p></div>
  % end
  <div class="card stat"><h2>Open invoices</h2><p class="big">{{stats["open_invoices"]}}</p><p>waiting for payment</p></div>
</section>
<section class="card">
  <h2>Revenue per day, last 30 days</h2>
  {{!chart}}
</section>
<section class="cards">
  <div class="card">
    <h2>Payments, last 30 days</h2>
    <table><tbody>
    % for status in ("finished", "partially_paid", "expired", "failed", "refunded"):
    <tr><th>{{status.replace("_", " ")}}</th><td class="num">{{stats["outcomes"].get(status, 0)}}</td></tr>
    % end
    </tbody></table>
    <p class="muted">Confirmed by webhook: {{stats["sources"].get("ipn", 0)}} · by reconciliation: {{stats["sources"].get("poll", 0)}} · by "check status": {{stats["sources"].get("check", 0)}} · by the admin: {{stats["sources"].get("admin", 0)}}</p>
  </div>
  <div class="card">
    <h2>From payment to delivery</h2>
    % if stats["deliveries"]:
    <p>Median <b>{{"%.1f" % stats["delivery_median"]}} s</b>, worst <b>{{"%.1f" % stats["delivery_worst"]}} s</b> over {{stats["deliveries"]}} paid order{{"" if stats["deliveries"] == 1 else "s"}} (30 days).</p>
    % else:
    <p class="muted">No paid order delivered in the last 30 days.</p>
    % end
    <p class="muted">Messages waiting: {{stats["outbox"]["pending"]}} · failed: {{stats["outbox"]["failed"]}}</p>
  </div>
</section>
<section class="cards">
  <div class="card">
    <h2>Low stock</h2>
    % if stats["low_stock"] or stats["sold_out"]:
    <ul>
      % for row in stats["low_stock"]:
      <li><a href="/admin/products/{{row['id']}}">{{row["name"]}}</a> · {{row["city"]}} / {{row["district"]}}: {{row["available"]}} left</li>
      % end
      % for row in stats["sold_out"]:
      <li><a href="/admin/products/{{row['id']}}">{{row["name"]}}</a>: sold out everywhere</li>
      % end
    </ul>
    % else:
    <p class="muted">Everything is well stocked.</p>
    % end
  </div>
  <div class="card">
    <h2>Recent problems</h2>
    % if problems:
    <ul class="log">
      % for at, level, name, message in problems:
      <li class="{{level.lower()}}"><time>{{at}}</time> {{level}} {{message}}</li>
      % end
    </ul>
    % else:
    <p class="muted">No warnings or errors since the shop started.</p>
    % end
  </div>
</section>

% rebase('admin/base.tpl', title='Dashboard', section='/admin')
<h1>Dashboard</h1>
% if health["status"] != "ok" or health.get("payments", "ok") != "ok":
<p class="flash bad">Health: {{health["status"]}} · bot {{health["bot"]}} · payments {{health.get("payments", "-")}}</p>
% end
<section class="cards stats">
  % for label, row in stats["revenue"].items():
  <div class="card stat"><h2>{{label}}</h2><p class="big">{{fmt(row["revenue_cents"])}}</p><p>{{row["orders"]}} paid order{{'s' if row["orders"] != 1 else ''}}</p></div>
  % end
  <div class="card stat"><h2>Open invoices</h2><p class="big">{{stats["open_invoices"]}}</p><p>waiting for payment</p></div>
</section>
% if rule_summary:
<div class="flash warn notice">Telegram's rule for digital goods: {{rule_summary}}. <a href="/admin/catalog#telegram-rule">See them in the Catalog</a>.</div>
% end
<section class="card by-method">
  <h2>Revenue by way of paying</h2>
  <table class="rows cols3">
    <thead><tr><th>Paid with</th>
    % for label in stats["revenue"]:
    <th class="num">{{label.capitalize()}}</th>
    % end
    </tr></thead>
    <tbody>
    % for m in ("balance", "crypto", "stars"):
    <tr><td class="key">{{method_words[m][:1].upper() + method_words[m][1:]}}</td>
      % for label, row in stats["revenue"].items():
      % cell = row["methods"][m]
      <td data-label="{{label.capitalize()}}" class="num">
        % if m == "stars":
        <b>{{stars(cell["stars"])}}</b><span class="sub">= {{fmt(cell["revenue_cents"])}}</span>
        % else:
        <b>{{fmt(cell["revenue_cents"])}}</b>
        % end
        <span class="sub">{{cell["orders"]}} order{{"s" if cell["orders"] != 1 else ""}}</span></td>
      % end
    </tr>
    % end
    </tbody>
  </table>
  <p class="muted">Paid orders, not refunded since (UTC days). Stars are what shoppers paid in Telegram; the euro value is the orders' prices.</p>
</section>
<section class="card revenue">
  <h2>Revenue per day, last 30 days</h2>
  {{!chart}}
  % sales = [row for row in stats["per_day"] if row[1] or row[2]][::-1]
  % if sales:
  <details>
    <summary>The numbers, day by day</summary>
    <table class="chart-numbers">
      <thead><tr><th scope="col">Day (UTC)</th><th scope="col" class="num">Paid orders</th><th scope="col" class="num">Revenue</th></tr></thead>
      <tbody>
      % for day, orders, cents in sales:
      <tr><th scope="row">{{day_label(day, long=True)}}</th><td class="num">{{orders}}</td><td class="num">{{fmt(cents)}}</td></tr>
      % end
      </tbody>
    </table>
    <p class="muted">Days without sales are left out.</p>
  </details>
  % end
</section>
<section class="cards stock-alerts">
  <div class="card stock" id="low-stock">
    <h2>Low stock</h2>
    % threshold = stats["low_stock_threshold"]
    % if not threshold:
    <p class="muted">The low-stock list is off: its threshold is 0 in <a href="/admin/settings#low_stock_threshold">Settings</a>.</p>
    % else:
    <p class="muted">At most {{threshold}} left in a place (<a href="/admin/settings#low_stock_threshold">change</a>). The owners get one Telegram note each time a place falls to it; adding units there above it arms the next.</p>
    % if stats["low_stock"]:
    <ul class="stock-list">
      % for row in stats["low_stock"]:
      <li><span class="what"><a href="/admin/products/{{row['id']}}">{{row["name"]}}</a> <span class="place">{{row["city"]}} / {{row["district"]}}</span></span> <b class="left">{{row["available"]}} left</b>
      % if row["noted_at"]:
      <span class="noted">🔔 Owners told {{row["noted_at"][:16].replace("T", " ")}} UTC</span>
      % end
      </li>
      % end
    </ul>
    % if stats["low_stock"][0]["total"] > len(stats["low_stock"]):
    <p class="muted">…and {{stats["low_stock"][0]["total"] - len(stats["low_stock"])}} more.</p>
    % end
    % else:
    <p>Nothing is down to {{threshold}} or fewer.</p>
    % end
    % end
  </div>
  <div class="card stock" id="sold-out">
    <h2>Sold out</h2>
    % if stats["sold_out"]:
    <p class="muted">Nothing left to sell in these places.</p>
    <ul class="stock-list">
      % for row in stats["sold_out"]:
      <li><span class="what"><a href="/admin/products/{{row['id']}}">{{row["name"]}}</a> <span class="place">{{row["city"]}} / {{row["district"]}}</span></span>
      % if row["reserved"]:
      <span class="held">{{row["reserved"]}} held by {{"an unpaid order" if row["reserved"] == 1 else "unpaid orders"}}: back on sale if not paid in time</span>
      % end
      % if row["noted_at"]:
      <span class="noted">🔔 Owners told {{row["noted_at"][:16].replace("T", " ")}} UTC</span>
      % end
      </li>
      % end
    </ul>
    % if stats["sold_out"][0]["total"] > len(stats["sold_out"]):
    <p class="muted">…and {{stats["sold_out"][0]["total"] - len(stats["sold_out"])}} more.</p>
    % end
    % else:
    <p>Nothing is sold out.</p>
    % end
  </div>
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

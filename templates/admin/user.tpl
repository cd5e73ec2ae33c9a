% rebase('admin/base.tpl', title=user['first_name'] or str(user['id']), section='/admin/users')
<p><a href="/admin/users">← Users</a></p>
<h1>{{user["first_name"] or "Shopper"}} {{("@" + user["username"]) if user["username"] else ""}} {{"(banned)" if user["is_banned"] else ""}}</h1>
<section class="cards">
  <div class="card stat"><h2>Balance</h2><p class="big">{{fmt(user["balance_cents"])}}</p><p>Telegram id {{user["id"]}} · since {{user["created_at"][:10]}}</p></div>
  <form method="post" action="/admin/users/{{user['id']}}/balance" class="card form">
    % include('admin/_csrf.tpl')
    <h2>Adjust the balance</h2>
    <label>Amount in EUR (a leading - takes money off) <input name="amount" required inputmode="decimal" placeholder="10.00 or -5.00"></label>
    <label>Reason (the shopper is told it) <input name="reason" required maxlength="200"></label>
    <button type="submit">Adjust</button>
  </form>
  <form method="post" action="/admin/users/{{user['id']}}/{{'unban' if user['is_banned'] else 'ban'}}" class="card form">
    % include('admin/_csrf.tpl')
    <h2>{{"Unban" if user["is_banned"] else "Ban"}}</h2>
    <p class="muted">{{"They can shop again." if user["is_banned"] else "They get one polite refusal and nothing else."}}</p>
    <button type="submit" class="{{'' if user['is_banned'] else 'danger'}}">{{"Unban" if user["is_banned"] else "Ban"}}</button>
  </form>
</section>
<section class="card" id="referrals"><h2>Referrals</h2>
  % r = get('referrer')
  % if r:
  <p>Referred by <a href="/admin/users/{{r['id']}}">{{r["first_name"] or "Shopper"}}{{(" @" + r["username"]) if r["username"] else ""}} ({{r["id"]}})</a>{{(" on " + user["referred_at"][:10]) if user["referred_at"] else ""}}.</p>
  % else:
  <p class="muted">Nobody referred them.</p>
  % end
  <p>Brought {{referred_count}} shopper{{"" if referred_count == 1 else "s"}} through their link; referral credit earned: {{fmt(referral_cents)}}.</p>
  % if referred:
  <table class="rows"><thead><tr><th>Shopper</th><th>Joined through the link (UTC)</th><th class="num">Credit</th></tr></thead><tbody>
  % for f in referred:
  <tr><td class="key"><a href="/admin/users/{{f['id']}}">{{f["first_name"] or "Shopper"}}{{(" @" + f["username"]) if f["username"] else ""}} ({{f["id"]}})</a></td><td data-label="Joined (UTC)">{{(f["referred_at"] or "")[:16].replace("T", " ")}}</td><td data-label="Credit" class="num">
    % if f["credit_cents"] is not None:
    {{fmt(f["credit_cents"])}} (<a href="/admin/orders/{{f['credit_order_id']}}">order #{{f["credit_order_id"]}}</a>)
    % else:
    <span class="muted">none yet</span>
    % end
  </td></tr>
  % end
  </tbody></table>
  % end
</section>
<section class="card"><h2>Orders</h2>
  <table class="rows"><thead><tr><th>#</th><th>Created (UTC)</th><th class="num">Total</th><th>Status</th></tr></thead><tbody>
  % for o in orders:
  <tr><td class="key"><a href="/admin/orders/{{o['id']}}">#{{o["id"]}}</a></td><td data-label="Created (UTC)">{{o["created_at"][:16].replace("T", " ")}}</td><td data-label="Total" class="num">{{fmt(o["total_cents"])}}</td><td data-label="Status" class="aside"><span class="status {{o['status']}}">{{o["status"]}}</span></td></tr>
  % end
  % if not orders:
  <tr><td colspan="4" class="muted">No orders.</td></tr>
  % end
  </tbody></table>
</section>
<section class="card"><h2>Payments</h2>
% include('admin/_payment_rows.tpl', payments=payments)
</section>
<section class="card"><h2>Ledger</h2>
  <table class="rows"><thead><tr><th>When (UTC)</th><th>Kind</th><th class="num">Amount</th><th class="num">Balance after</th><th>Reason</th></tr></thead><tbody>
  % for l in ledger:
  <tr><td data-label="When (UTC)">{{l["created_at"][:19].replace("T", " ")}}</td><td data-label="Kind">{{l["kind"]}}</td><td data-label="Amount" class="num">{{fmt(l["amount_cents"])}}</td><td data-label="Balance after" class="num">{{fmt(l["balance_after_cents"])}}</td><td data-label="Reason" class="wide">{{l["reason"]}}</td></tr>
  % end
  % if not ledger:
  <tr><td colspan="5" class="muted">No balance changes.</td></tr>
  % end
  </tbody></table>
</section>

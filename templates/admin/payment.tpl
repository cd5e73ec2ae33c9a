% rebase('admin/base.tpl', title='Payment %s' % payment['provider_id'], section='/admin/payments')
<p><a href="/admin/payments">← Payments</a></p>
<h1>Payment {{payment["provider_id"]}} <span class="status {{payment['status']}}">{{payment["status"]}}</span></h1>
<section class="card">
  <table><tbody>
    <tr><th>For</th><td>{{("order #%d" % payment["order_id"]) if payment["order_id"] else "balance top-up"}}{{" (a repeat deposit)" if payment["parent_id"] else ""}}
      % if payment["order_id"]:
      · <a href="/admin/orders/{{payment['order_id']}}">open the order</a>
      % end
    </td></tr>
    <tr><th>Shopper</th><td><a href="/admin/users/{{payment['user_id']}}">{{payment["first_name"]}}{{(" @" + payment["username"]) if payment["username"] else ""}} ({{payment["user_id"]}})</a></td></tr>
    <tr><th>Price</th><td>{{fmt(payment["price_cents"])}}</td></tr>
    % if is_stars:
    <tr><th>Paid with</th><td>{{provider}}</td></tr>
    <tr><th>Amount</th><td>{{stars(payment["pay_amount"])}}</td></tr>
    <tr><th>Charge id</th><td>
      % if payment["charge_id"]:
      <code class="charge">{{payment["charge_id"]}}</code> <span class="muted">(Telegram's telegram_payment_charge_id: the key of a refund and of a dispute)</span>
      % else:
      <span class="muted">none: Telegram has not charged this invoice</span>
      % end
    </td></tr>
    % else:
    <tr><th>Asked</th><td>{{payment["pay_amount"]}} {{payment["pay_currency"].upper()}} to <code>{{payment["pay_address"]}}</code>{{(" memo " + payment["payin_extra_id"]) if payment["payin_extra_id"] else ""}}</td></tr>
    <tr><th>Received</th><td>{{payment["actually_paid"] or "0"}} {{payment["pay_currency"].upper()}}</td></tr>
    % end
    <tr><th>Outcome</th><td>{{payment["outcome"] or "—"}}{{(", credited " + fmt(payment["credited_cents"])) if payment["credited_cents"] else ""}}</td></tr>
    <tr><th>Created / expires</th><td>{{payment["created_at"][:19].replace("T", " ")}} / {{payment["expires_at"][:19].replace("T", " ")}} UTC</td></tr>
    <tr><th>Final</th><td>{{(payment["final_at"][:19].replace("T", " ") + " UTC, by " + (payment["final_source"] or "?")) if payment["final_at"] else "not yet"}}</td></tr>
  </tbody></table>
</section>
% if is_stars:
<section class="card">
  <h2>Telegram Stars</h2>
  % if payment["provider"] == "sandbox_stars":
  <p class="muted">A sandbox payment: the shop played Telegram (🧪), and no Stars moved.</p>
  % end
  <p class="muted">Telegram tells the shop about a Stars payment in the bot's updates, and the shop also reads Telegram's record of Star transactions every <code>PAYMENT_POLL_SECONDS</code> (a minute by default), so a payment whose update was lost is found again: there is nothing to re-check or mark as paid by hand.{{" To give the Stars back, use Refund in Stars on the order's page." if payment["order_id"] and payment["charge_id"] else ""}}</p>
</section>
% if star_refunds:
<section class="card">
  <h2>Refunds in Stars</h2>
  % include('admin/_star_refunds.tpl', refunds=star_refunds)
</section>
% end
% else:
<section class="cards">
  <form method="post" action="/admin/payments/{{payment['id']}}/recheck" class="card form">
    % include('admin/_csrf.tpl')
    <h2>Re-check with {{provider}}</h2>
    <p class="muted">Asks {{provider}} for this payment's status and applies it as an IPN would.</p>
    <button type="submit">Re-check</button>
  </form>
  % if payment["status"] not in ("finished", "partially_paid", "refunded"):
  <form method="post" action="/admin/payments/{{payment['id']}}/mark-paid" class="card form">
    % include('admin/_csrf.tpl')
    <h2>Mark as paid</h2>
    <p class="muted">For money that reached you outside {{provider}}: delivers the order (or credits the top-up) exactly as a finished payment would.</p>
    <label>Reason <input name="reason" required maxlength="200"></label>
    <button type="submit" class="danger">Mark as paid</button>
  </form>
  % end
</section>
% if children:
<section class="card"><h2>Repeat deposits to this address</h2>
% include('admin/_payment_rows.tpl', payments=children)
</section>
% end
<section class="card">
  <h2>IPNs</h2>
  % if ipns:
  % include('admin/_ipns.tpl', ipns=ipns)
  % else:
  <p class="muted">No IPN arrived for this payment.</p>
  % end
</section>
% end

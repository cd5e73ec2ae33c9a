% breaking, unsaid = report["breaking"], report["unsaid"]
<section class="card rule" id="telegram-rule"{{!' hx-swap-oob="true"' if get('oob') else ''}}>
  <h2>Telegram's rule for digital goods</h2>
  <p>Telegram requires digital goods (codes, keys, e-books, download links) sold in a bot or Mini App to be paid in Telegram Stars, and may hide bots that sell them any other way from mobile users (<a href="{{rule_source}}" target="_blank" rel="noopener noreferrer">Telegram's rules</a>).</p>
  % if report["rule"]:
  <p class="muted">This shop follows the rule (<a href="/admin/settings#telegram_rule">Settings</a>): inside Telegram, digital products are offered in Stars only, whatever else they allow.</p>
  % else:
  <p class="muted">This shop does not follow the rule now (<a href="/admin/settings#telegram_rule">Settings</a>): each product is offered every way it allows.</p>
  % end
  % if breaking:
  <h3>{{len(breaking)}} digital product{{"s" if len(breaking) != 1 else ""}} may be paid other than in Stars</h3>
  <ul class="rule-list">
    % for p in breaking:
    <li><a href="/admin/products/{{p['id']}}">{{p["name"]}}</a> <span class="ways">{{ways_of(p, False)}}</span>
      % if report["rule"] and "stars" not in (p["pay_methods"] or "stars"):
      <span class="note bad">It does not allow Stars, so under the rule it cannot be bought at all.</span>
      % elif report["rule"]:
      <span class="note">Offered in Stars only inside Telegram already; its own setting still says otherwise.</span>
      % else:
      <span class="note">Offered in crypto or from the balance too.</span>
      % end
    </li>
    % end
  </ul>
  <form method="post" action="/admin/catalog/stars-only" class="rule-action">
    % include('admin/_csrf.tpl')
    <button type="submit">Make them Stars only</button>
    <span class="muted">Sets each of them to be paid in Telegram Stars only.</span>
  </form>
  % else:
  <p class="ok">✓ Every digital product is paid in Telegram Stars only.</p>
  % end
  % if unsaid:
  <h3>{{len(unsaid)}} product{{"s do" if len(unsaid) != 1 else " does"}} not say whether {{"they are" if len(unsaid) != 1 else "it is"}} digital or physical</h3>
  <p class="muted">They are sold as before kinds existed, every way they allow. Open each and choose what it is.</p>
  <ul class="rule-list">
    % for p in unsaid:
    <li><a href="/admin/products/{{p['id']}}">{{p["name"]}}</a> <span class="ways">{{ways_of(p, False)}}</span></li>
    % end
  </ul>
  % end
</section>
